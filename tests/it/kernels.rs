//! Each fused kernel op (issue 5) against the unfused tensor-op path it replaces: forward values
//! and input gradients, f32 and bf16. On the CPU this checks the fused ops' CPU implementations
//! (the same arithmetic as `kernels/*.cu`); `LORA_TRAIN_TEST_DEVICE=cuda:0` on a `--features cuda`
//! build runs the same comparisons with the CUDA kernels (scripts/gpu-check.sh does). Flash
//! attention has no CPU implementation: its device test runs on CUDA only, and
//! `tests/it/kernel_emu.rs` runs the same check on the CPU with the kernel under an emulator.

use crate::common::flash;

use candle_core::{DType, Device, Tensor, Var};
use lora_train::eval::loss::{head_nll_fused, head_nll_unfused};
use lora_train::kernels;
use lora_train::kernels::glu::MlpActivation;
use lora_train::model::mlp::{gated_fused, gated_unfused};
use lora_train::model::norm::RmsNorm;
use lora_train::model::rope::{apply_rotary_fused, apply_rotary_unfused, Rotary};
use lora_train::model::LmHead;
use lora_train::quant::nf4::Nf4Matrix;
use lora_train::quant::FrozenWeight;
use lora_train::Result;

fn device() -> Result<Device> {
    let name = std::env::var("LORA_TRAIN_TEST_DEVICE").unwrap_or_else(|_| "cpu".into());
    lora_train::device::parse_device(&name)
}

fn max_abs(a: &Tensor, b: &Tensor) -> Result<f32> {
    let d = (a.to_dtype(DType::F32)? - b.to_dtype(DType::F32)?)?;
    Ok(d.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
}

fn scale(t: &Tensor) -> Result<f32> {
    Ok(t.to_dtype(DType::F32)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f32>()?
        .max(1e-6))
}

/// Relative tolerance of a comparison in `dtype`.
fn tol(dtype: DType) -> f32 {
    match dtype {
        DType::F32 => 2e-5,
        _ => 2e-2,
    }
}

fn assert_close(what: &str, fused: &Tensor, unfused: &Tensor, dtype: DType) -> Result<()> {
    assert_eq!(fused.dims(), unfused.dims(), "{what}: shapes differ");
    let (d, s) = (max_abs(fused, unfused)?, scale(unfused)?);
    assert!(
        d <= tol(dtype) * s,
        "{what} ({dtype:?}): max abs difference {d} against a scale of {s}"
    );
    Ok(())
}

/// `(value, grad of each input)` of `f` under `sum(f(..) · w)` for a fixed random `w`.
fn value_and_grads(
    inputs: &[Tensor],
    f: &dyn Fn(&[Tensor]) -> Result<Tensor>,
    seed_w: &Tensor,
) -> Result<(Tensor, Vec<Tensor>)> {
    let vars: Vec<Var> = inputs
        .iter()
        .map(Var::from_tensor)
        .collect::<candle_core::Result<_>>()?;
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let y = f(&ts)?;
    let loss = (y.to_dtype(DType::F32)? * seed_w)?.sum_all()?;
    let grads = loss.backward()?;
    let gs = ts
        .iter()
        .map(|t| {
            grads
                .get(t)
                .cloned()
                .ok_or_else(|| lora_train::Error::Msg("an input got no gradient".into()))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((y, gs))
}

fn randn(shape: &[usize], dtype: DType, dev: &Device) -> Result<Tensor> {
    Ok(Tensor::randn(0f32, 1.0, shape, dev)?.to_dtype(dtype)?)
}

fn compare(
    what: &str,
    inputs: &[Tensor],
    out_shape: &[usize],
    fused: &dyn Fn(&[Tensor]) -> Result<Tensor>,
    unfused: &dyn Fn(&[Tensor]) -> Result<Tensor>,
) -> Result<()> {
    let dtype = inputs[0].dtype();
    let w = randn(out_shape, DType::F32, inputs[0].device())?;
    let (yf, gf) = value_and_grads(inputs, fused, &w)?;
    let (yu, gu) = value_and_grads(inputs, unfused, &w)?;
    assert_close(&format!("{what} forward"), &yf, &yu, dtype)?;
    for (i, (a, b)) in gf.iter().zip(&gu).enumerate() {
        assert_close(&format!("{what} gradient of input {i}"), a, b, dtype)?;
    }
    Ok(())
}

#[test]
fn rms_norm_matches_unfused() -> Result<()> {
    let dev = device()?;
    for dtype in [DType::F32, DType::BF16] {
        for unit_offset in [false, true] {
            let x = randn(&[3, 5, 96], dtype, &dev)?;
            let w = (randn(&[96], dtype, &dev)? * 0.5)?;
            let norm = RmsNorm::new(w, 1e-6, unit_offset);
            compare(
                &format!("rms-norm (unit offset {unit_offset})"),
                &[x],
                &[3, 5, 96],
                &|t| norm.forward_fused(&t[0]),
                &|t| norm.forward_unfused(&t[0]),
            )?;
        }
    }
    Ok(())
}

#[test]
fn rope_matches_unfused_on_a_transposed_view() -> Result<()> {
    let dev = device()?;
    let rotary = Rotary::new(16, 10000.0, None);
    for dtype in [DType::F32, DType::BF16] {
        let (cos, sin) = rotary.cos_sin(3, 7, dtype, &dev)?;
        // [B, T, H, D] -> [B, H, T, D] as the attention builds q and k: a strided view.
        let x = randn(&[2, 7, 3, 16], dtype, &dev)?;
        compare(
            "rope",
            &[x],
            &[2, 3, 7, 16],
            &|t| apply_rotary_fused(&t[0].transpose(1, 2)?, &cos, &sin),
            &|t| apply_rotary_unfused(&t[0].transpose(1, 2)?.contiguous()?, &cos, &sin),
        )?;
    }
    Ok(())
}

#[test]
fn glu_matches_unfused() -> Result<()> {
    let dev = device()?;
    for dtype in [DType::F32, DType::BF16] {
        for act in [MlpActivation::Silu, MlpActivation::GeluTanh] {
            let g = (randn(&[2, 9, 40], dtype, &dev)? * 2.0)?;
            let u = randn(&[2, 9, 40], dtype, &dev)?;
            compare(
                &format!("glu ({act:?})"),
                &[g, u],
                &[2, 9, 40],
                &|t| gated_fused(&t[0], &t[1], act),
                &|t| gated_unfused(&t[0], &t[1], act),
            )?;
        }
    }
    Ok(())
}

#[test]
fn cross_entropy_matches_unfused() -> Result<()> {
    let dev = device()?;
    let (n, hidden, vocab) = (6, 32, 1000);
    let targets: Vec<u32> = vec![0, 999, 17, 256, 512, 700];
    for dtype in [DType::F32, DType::BF16] {
        for softcap in [None, Some(5.0)] {
            let w = randn(&[vocab, hidden], dtype, &dev)?;
            let head = LmHead {
                weight: FrozenWeight::Dense(w),
                softcap,
            };
            let h = randn(&[n, hidden], dtype, &dev)?;
            // 256-column blocks: several blocks, the targets in different ones.
            let block = n * 256;
            compare(
                &format!("cross-entropy (softcap {softcap:?})"),
                &[h],
                &[n],
                &|t| head_nll_fused(&t[0], &head, &targets, block),
                &|t| head_nll_unfused(&t[0], &head, &targets, block),
            )?;
        }
    }
    Ok(())
}

#[test]
fn nf4_dequantize_matches_the_host() -> Result<()> {
    let dev = device()?;
    let (rows, cols) = (48, 128);
    let data: Vec<f32> = (0..rows * cols)
        .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * (1.0 + (i / cols) as f32 * 0.1))
        .collect();
    let m = Nf4Matrix::quantize(&data, rows, cols)?;
    let on_device = kernels::nf4::Nf4Device::new(&m, &dev)?;
    for (r0, n) in [(0, rows), (5, 11), (47, 1)] {
        let mut host = vec![0f32; n * cols];
        m.dequantize_rows_into(r0, r0 + n, &mut host)?;
        let host = Tensor::from_vec(host, (n, cols), &Device::Cpu)?;
        let got = on_device
            .dequantize_rows(r0, n, DType::F32)?
            .to_device(&Device::Cpu)?;
        assert_eq!(max_abs(&got, &host)?, 0.0, "rows {r0}..{}", r0 + n);
        let bf = on_device
            .dequantize_rows(r0, n, DType::BF16)?
            .to_device(&Device::Cpu)?;
        assert_eq!(
            max_abs(&bf, &host.to_dtype(DType::BF16)?)?,
            0.0,
            "bf16 rows {r0}..{}",
            r0 + n
        );
    }
    Ok(())
}

/// A 4-bit weight of several dequantization blocks (the CPU's block size; on a GPU one block
/// usually covers a weight) multiplies on the device like its dequantized matrix, both ways:
/// the input gradient takes a column range of the output gradient per block, which CUDA's GEMM
/// only takes as a copy.
#[test]
fn a_multi_block_4bit_weight_multiplies_like_its_dequantized_matrix() -> Result<()> {
    use lora_train::quant::{QuantWeight, Quantize};
    use std::sync::Arc;
    let dev = device()?;
    for dtype in [DType::F32, DType::BF16] {
        let w = (randn(&[40, 256], DType::F32, &dev)? * 0.05)?;
        // 7 rows per block: six blocks, the last one short.
        let q = QuantWeight::quantize_in_blocks("w", &w, Quantize::Nf4, dtype, 7)?;
        assert_eq!(q.block_ranges().len(), 6);
        let dense = q.dequantize()?.to_dtype(dtype)?;
        let x = randn(&[5, 256], dtype, &dev)?;
        let g = randn(&[5, 40], dtype, &dev)?;
        let frozen = FrozenWeight::Quant(Arc::new(q));
        // Strict: on the CPU too, a product in a layout CUDA refuses is an error.
        let (y, gx) = lora_train::gemm::with_strict_gemm(|| -> Result<_> {
            Ok((frozen.product_t(&x)?, frozen.grad_input(&g)?))
        })?;
        assert_close("4-bit forward", &y, &x.matmul(&dense.t()?)?, dtype)?;
        assert_close("4-bit input gradient", &gx, &g.matmul(&dense)?, dtype)?;
    }
    Ok(())
}

/// The fused AdamW update (the kernel on CUDA; its CPU implementation on the CPU) against the
/// unfused tensor-op update, over three clipped steps with weight decay.
#[test]
fn adamw_matches_unfused() -> Result<()> {
    use lora_train::train::optimizer::{clip_coefficient, global_norm, AdamW, AdamWConfig};
    let dev = device()?;
    let init = [
        randn(&[16, 64], DType::F32, &dev)?,
        randn(&[300], DType::F32, &dev)?,
    ];
    let grads: Vec<Vec<Tensor>> = (0..3)
        .map(|_| {
            init.iter()
                .map(|t| randn(t.dims(), DType::F32, &dev))
                .collect()
        })
        .collect::<Result<_>>()?;
    let cfg = AdamWConfig {
        weight_decay: 0.05,
        ..Default::default()
    };
    let run = |fused: bool| -> Result<Vec<Tensor>> {
        let vars = init
            .iter()
            .map(Var::from_tensor)
            .collect::<candle_core::Result<Vec<_>>>()?;
        let mut opt = AdamW::new(vars.clone(), cfg)?;
        opt.force_fused(fused);
        for g in &grads {
            let coef = clip_coefficient(global_norm(g)?, 20.0);
            opt.step_clipped(g, 1e-2, coef)?;
        }
        Ok(vars.iter().map(|v| v.as_tensor().clone()).collect())
    };
    let (fused, unfused) = (run(true)?, run(false)?);
    for (f, u) in fused.iter().zip(&unfused) {
        assert_close("AdamW update", f, u, DType::F32)?;
    }
    Ok(())
}

/// The fused dropout (the kernel on CUDA) against the product with a mask drawn on the host:
/// the same mask and the same rounding, so equal bit for bit, in f32 and bf16.
#[test]
fn dropout_matches_unfused() -> Result<()> {
    use lora_train::kernels::dropout;
    let dev = device()?;
    for dtype in [DType::F32, DType::BF16] {
        let x = randn(&[3, 257, 33], dtype, &dev)?;
        let key = 0xFEED_0000_0000_0042;
        let fused = dropout::apply_fused(&x, key, 0.9, dtype)?;
        let unfused = dropout::apply_unfused(&x, key, 0.9, dtype)?;
        assert_eq!(
            max_abs(&fused, &unfused)?,
            0.0,
            "dropout ({dtype:?}) differs from its unfused path"
        );
    }
    Ok(())
}

#[test]
fn a_fused_op_rejects_what_it_cannot_run() -> Result<()> {
    let dev = device()?;
    let x = Tensor::zeros((2, 3), DType::U32, &dev)?;
    let w = Tensor::zeros(3, DType::U32, &dev)?;
    let err = kernels::rms_norm::forward(&x, &w, 1e-6, false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("unsupported dtype") || err.contains("f32, bf16 or f16"),
        "{err}"
    );
    Ok(())
}

#[test]
fn flash_attention_matches_eager_values_and_gradients() -> flash::Result<()> {
    let dev = device()?;
    if !dev.is_cuda() {
        eprintln!(
            "flash attention runs on CUDA only (LORA_TRAIN_TEST_DEVICE=cuda:0); tests/it/kernel_emu.rs checks the kernel on the CPU"
        );
        return Ok(());
    }
    for c in flash::cases() {
        flash::check(&dev, &c, |x| {
            let p = kernels::attention::FlashParams {
                scale: x.scale,
                offset: c.offset,
                window: c.window,
            };
            let seg = x.segment_starts.as_ref();
            let (o, lse) =
                kernels::attention::flash_fwd(&x.q, &x.k, &x.v, Some(&x.key_valid), seg, &p)?;
            let (dq, dk, dv) = kernels::attention::flash_bwd(
                &x.q,
                &x.k,
                &x.v,
                &o,
                &lse,
                &x.grad_o,
                Some(&x.key_valid),
                seg,
                &p,
            )?;
            Ok(flash::Outputs { o, lse, dq, dk, dv })
        })?;
    }
    Ok(())
}

/// Shapes the kernel cannot take are refused with the reason, on any device (the checks come
/// before the launch); `supported` says yes only on CUDA, for bf16/f16 and grouped heads.
#[test]
fn flash_attention_refuses_what_it_cannot_run() -> Result<()> {
    let dev = device()?;
    let q = Tensor::zeros((1, 4, 8, 64), DType::BF16, &dev)?;
    let k3 = Tensor::zeros((1, 3, 8, 64), DType::BF16, &dev)?;
    let p = kernels::attention::FlashParams {
        scale: 1.0,
        offset: 1,
        window: None,
    };
    let err = kernels::attention::flash_fwd(&q, &q, &q, None, None, &p)
        .unwrap_err()
        .to_string();
    assert!(err.contains("8 keys for 8 queries at offset 1"), "{err}");
    let p = kernels::attention::FlashParams { offset: 0, ..p };
    let err = kernels::attention::flash_fwd(&q, &k3, &k3, None, None, &p)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("4 query heads do not group over 3 kv heads"),
        "{err}"
    );
    let q48 = Tensor::zeros((1, 4, 8, 48), DType::BF16, &dev)?;
    let err = kernels::attention::flash_fwd(&q48, &q48, &q48, None, None, &p)
        .unwrap_err()
        .to_string();
    assert!(err.contains("head dim 48"), "{err}");
    let f = q.to_dtype(DType::F32)?;
    let err = kernels::attention::flash_fwd(&f, &f, &f, None, None, &p)
        .unwrap_err()
        .to_string();
    assert!(err.contains("bf16 or f16"), "{err}");
    assert!(!kernels::attention::supported(&q, &k3));
    assert!(!kernels::attention::supported(&f, &f));
    assert_eq!(kernels::attention::supported(&q, &q), dev.is_cuda());
    Ok(())
}
