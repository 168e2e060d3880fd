//! The flash-attention check shared by the device test (`tests/it/kernels.rs`, the CUDA kernels through
//! `lora_train::kernels::attention`) and the emulator test (`tests/it/kernel_emu.rs`, the same kernels
//! on the CPU): the inputs of a case, eager attention in f32 with its autograd gradients as the
//! reference, and the comparison of a kernel's `(o, lse, dq, dk, dv)` with it.
#![allow(dead_code)]

use candle_core::{DType, Device, Tensor, Var};
use lora_train::model::attention::attention_eager;
use lora_train::model::attention::repeat_kv;
use lora_train::model::mask::{attention_mask, Segments};

pub type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

pub struct Case {
    pub d: usize,
    pub tq: usize,
    pub offset: usize,
    pub window: Option<usize>,
    /// Left padding keys of batch row 1.
    pub pad: usize,
    pub dtype: DType,
    /// Packed rows (offset 0, no padding): conversations of these lengths, row 0 in this
    /// order and row 1 reversed, each filled up with one more conversation.
    pub packed: Option<Vec<usize>>,
}

impl Case {
    /// The segment starts of a packed case's two rows of `t` tokens.
    pub fn segment_starts(&self, t: usize) -> Option<Vec<Vec<u32>>> {
        let lens = self.packed.as_ref()?;
        let row = |lens: &mut dyn Iterator<Item = &usize>| {
            let mut starts = Vec::with_capacity(t);
            let mut start = 0;
            for &n in lens {
                for _ in 0..n.min(t - starts.len()) {
                    starts.push(start as u32);
                }
                start = starts.len();
            }
            starts.resize(t, start as u32);
            starts
        };
        Some(vec![row(&mut lens.iter()), row(&mut lens.iter().rev())])
    }
}

/// Every head dim with a full causal block, a few queries late in a long sequence under a window,
/// and a window with heavy padding (rows with no allowed key); bf16, and f16 once.
pub fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for d in [64, 128, 256] {
        for (tq, offset, window, pad) in [
            (96, 0, None, 5),
            (5, 91, Some(16), 3),
            (70, 30, Some(40), 37),
        ] {
            cases.push(Case {
                d,
                tq,
                offset,
                window,
                pad,
                dtype: DType::BF16,
                packed: None,
            });
        }
        // Packed rows, with short conversations inside one tile, ones across tiles, and a
        // window inside a conversation.
        for window in [None, Some(16)] {
            cases.push(Case {
                d,
                tq: 150,
                offset: 0,
                window,
                pad: 0,
                dtype: DType::BF16,
                packed: Some(vec![1, 37, 5, 70, 2]),
            });
        }
    }
    cases.push(Case {
        d: 128,
        tq: 96,
        offset: 0,
        window: None,
        pad: 5,
        dtype: DType::F16,
        packed: None,
    });
    cases
}

/// One case's inputs on the test device: 2 sequences, 4 query heads over 2 kv heads.
pub struct Inputs {
    pub b: usize,
    pub h: usize,
    pub kvh: usize,
    pub tk: usize,
    pub scale: f32,
    pub q: Tensor,
    pub k: Tensor,
    pub v: Tensor,
    /// Zero on the rows without an allowed key.
    pub grad_o: Tensor,
    /// u8 `[b, tk]`, 1 = a real token.
    pub key_valid: Tensor,
    /// u32 `[b, tq]` for a packed case.
    pub segment_starts: Option<Tensor>,
}

/// What a kernel returns: `o` in the input dtype, `lse` f32, the gradients in any float dtype.
pub struct Outputs {
    pub o: Tensor,
    pub lse: Tensor,
    pub dq: Tensor,
    pub dk: Tensor,
    pub dv: Tensor,
}

pub fn host(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?)
}

/// max |a − b| over the entries where `keep`, relative to max |b| there.
pub fn rel_err(a: &[f32], b: &[f32], keep: impl Fn(usize) -> bool) -> f32 {
    assert_eq!(a.len(), b.len());
    let (mut err, mut top) = (0f32, 0f32);
    for i in (0..a.len()).filter(|&i| keep(i)) {
        err = err.max((a[i] - b[i]).abs());
        top = top.max(b[i].abs());
    }
    err / top.max(1e-6)
}

/// Runs `kernel` on the case's inputs (made on `dev`) and compares its results with eager
/// attention in f32 on the same rounded values: outputs and gradients within 2% of their largest
/// entry, lse within 0.01; rows with no allowed key must give o = 0 and lse = +inf.
pub fn check(
    dev: &Device,
    c: &Case,
    kernel: impl FnOnce(&Inputs) -> Result<Outputs>,
) -> Result<()> {
    let (b, h, kvh, d) = (2, 4, 2, c.d);
    let tk = c.offset + c.tq;
    let scale = 1.0 / (d as f32).sqrt();
    let pad: Vec<Vec<bool>> = (0..b)
        .map(|bi| (0..tk).map(|j| bi == 0 || j >= c.pad).collect())
        .collect();
    let valid: Vec<u8> = pad.iter().flatten().map(|&x| x as u8).collect();
    let key_valid = Tensor::from_vec(valid, (b, tk), dev)?;
    let starts = c.segment_starts(c.tq);
    let segments = starts.clone().map(|s| Segments::new(s, c.tq)).transpose()?;
    let segment_starts = match &starts {
        Some(s) => Some(Tensor::from_vec(
            s.iter().flatten().copied().collect::<Vec<u32>>(),
            (b, c.tq),
            dev,
        )?),
        None => None,
    };
    let has_key: Vec<bool> = (0..b * h * c.tq)
        .map(|r| {
            let (bi, i) = (r / (h * c.tq), r % c.tq);
            let pos = c.offset + i;
            (0..=pos).any(|j| pad[bi][j] && c.window.is_none_or(|w| pos - j < w))
        })
        .collect();
    let row_mask: Vec<f32> = has_key.iter().map(|&x| x as u8 as f32).collect();
    let row_mask = Tensor::from_vec(row_mask, (b, h, c.tq, 1), dev)?;
    let rnd = |shape: (usize, usize, usize, usize)| -> Result<Tensor> {
        Ok(Tensor::randn(0f32, 1., shape, dev)?.to_dtype(c.dtype)?)
    };
    let (q, k, v) = (
        rnd((b, h, c.tq, d))?,
        rnd((b, kvh, tk, d))?,
        rnd((b, kvh, tk, d))?,
    );
    let grad_o = rnd((b, h, c.tq, d))?.broadcast_mul(&row_mask.to_dtype(c.dtype)?)?;

    // The reference, on the CPU in f32 on the same rounded values.
    let cpu = Device::Cpu;
    let f32_cpu = |t: &Tensor| -> Result<Tensor> { Ok(t.to_device(&cpu)?.to_dtype(DType::F32)?) };
    let (qf, kf, vf) = (
        Var::from_tensor(&f32_cpu(&q)?)?,
        Var::from_tensor(&f32_cpu(&k)?)?,
        Var::from_tensor(&f32_cpu(&v)?)?,
    );
    let mask = match &segments {
        Some(seg) => seg.additive_mask(c.window, DType::F32, &cpu)?,
        None => attention_mask(b, c.tq, c.offset, Some(&pad), c.window, DType::F32, &cpu)?,
    };
    let (kr, vr) = (
        repeat_kv(kf.as_tensor(), h / kvh)?,
        repeat_kv(vf.as_tensor(), h / kvh)?,
    );
    let o_ref = attention_eager(qf.as_tensor(), &kr, &vr, scale as f64, None, &mask)?;
    let grads = (&o_ref * f32_cpu(&grad_o)?)?.sum_all()?.backward()?;
    let grad = |x: &Var| -> Result<Vec<f32>> {
        host(grads.get(x.as_tensor()).ok_or("no reference gradient")?)
    };
    let scores = (qf.as_tensor().matmul(&kr.t()?)? * scale as f64)?.broadcast_add(&mask)?;
    let lse_ref = host(&scores.exp()?.sum(3)?.log()?)?;

    let inputs = Inputs {
        b,
        h,
        kvh,
        tk,
        scale,
        q,
        k,
        v,
        grad_o,
        key_valid,
        segment_starts,
    };
    let out = kernel(&inputs)?;
    assert_eq!(out.o.dims(), inputs.q.dims(), "o shape");
    assert_eq!(out.dq.dims(), inputs.q.dims(), "dq shape");
    assert_eq!(out.dk.dims(), inputs.k.dims(), "dk shape");
    assert_eq!(out.dv.dims(), inputs.v.dims(), "dv shape");
    assert_eq!(out.lse.dims(), [b, h, c.tq], "lse shape");

    let what = format!(
        "d={d} tq={} offset={} window={:?} {:?} packed={:?}",
        c.tq, c.offset, c.window, c.dtype, c.packed
    );
    let tol = 2e-2;
    let o = host(&out.o)?;
    let e = rel_err(&o, &host(&o_ref)?, |i| has_key[i / d]);
    assert!(e < tol, "{what}: output differs by {e}");
    let lse = host(&out.lse)?;
    for (r, &has) in has_key.iter().enumerate() {
        if has {
            assert!(
                (lse[r] - lse_ref[r]).abs() < 1e-2,
                "{what}: lse row {r}: {} vs {}",
                lse[r],
                lse_ref[r]
            );
        } else {
            assert!(
                lse[r] == f32::INFINITY,
                "{what}: row {r} has no key but lse {}",
                lse[r]
            );
            assert!(
                o[r * d..(r + 1) * d].iter().all(|&x| x == 0.0),
                "{what}: row {r} output not zero"
            );
        }
    }
    for (name, got, want) in [
        ("dq", &out.dq, grad(&qf)?),
        ("dk", &out.dk, grad(&kf)?),
        ("dv", &out.dv, grad(&vf)?),
    ] {
        let e = rel_err(&host(got)?, &want, |_| true);
        assert!(e < tol, "{what}: {name} differs by {e}");
    }
    Ok(())
}
