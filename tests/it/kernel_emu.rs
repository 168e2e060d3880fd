//! The CUDA kernels themselves (`kernels/*.cu`), run on the CPU: `kernels/emu/harness.cpp`
//! compiles them with the host C++ compiler against a CUDA emulator (`kernels/emu/cuda_emu.h`:
//! fibers for threads, barriers, warp shuffles, `mma.sync` and `ldmatrix` from their PTX
//! register layouts), and each test runs the launch description the CUDA path launches (each
//! op's `*_launch` function: entry point, geometry, arguments with buffers by name), then
//! compares the result with the op's CPU implementation (or, for attention, with eager
//! attention and its autograd gradients through `common/flash.rs`, the check the CUDA device test
//! in `tests/it/kernels.rs` runs).
//! No GPU and no CUDA files are needed: a C++17 compiler (`$CXX`, else `c++`).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use candle_core::{DType, Device, Tensor};
use lora_train::kernels::attention::{self, Dims, FlashParams};
use lora_train::kernels::glu::MlpActivation;
use lora_train::kernels::launch::{Arg, Launch};
use lora_train::kernels::{adamw, cross_entropy, dropout, glu, nf4, rms_norm, rope};
use lora_train::quant::nf4::{dequant_tables, Nf4Matrix};

use crate::common::flash;

use flash::{host, rel_err, Result};

/// The emulator harness, compiled once per source state (cached under the target dir).
fn harness() -> &'static Path {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| {
        let kernels = Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels");
        let mut sources: Vec<PathBuf> = Vec::new();
        for dir in [kernels.clone(), kernels.join("emu"), kernels.join("emu/include")] {
            for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
                let p = e.expect("a directory entry").path();
                if p.is_file() && p.extension().is_some_and(|x| x == "cu" || x == "cuh" || x == "h" || x == "cpp") {
                    sources.push(p);
                }
            }
        }
        sources.sort();
        let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
        // Extra flags, e.g. "-fsanitize=undefined" while working on a kernel.
        let extra = std::env::var("LORA_TRAIN_EMU_CXXFLAGS").unwrap_or_default();
        // FNV-1a over the sources, the compiler and the flags: a changed kernel is rebuilt.
        let mut hash: u64 = 0xcbf29ce484222325;
        for p in &sources {
            let bytes = std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            for b in p.to_string_lossy().bytes().chain(bytes).chain(cxx.bytes()).chain(extra.bytes()) {
                hash = (hash ^ u64::from(b)).wrapping_mul(0x100000001b3);
            }
        }
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("kernel-emu");
        std::fs::create_dir_all(&dir).expect("create the kernel-emu dir");
        let exe = dir.join(format!("harness-{hash:016x}"));
        if exe.is_file() {
            return exe;
        }
        let tmp = dir.join(format!("harness-{hash:016x}.{}.tmp", std::process::id()));
        let out = Command::new(&cxx)
            .args(["-std=c++17", "-O2", "-fno-strict-aliasing", "-ffp-contract=off", "-w"])
            .args(extra.split_whitespace())
            .arg(format!("-I{}", kernels.join("emu/include").display()))
            .arg(format!("-I{}", kernels.join("emu").display()))
            .arg(kernels.join("emu/harness.cpp"))
            .arg("-o")
            .arg(&tmp)
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run the C++ compiler `{cxx}` ({e}); the kernel emulator tests need one (set CXX)")
            });
        assert!(
            out.status.success(),
            "compiling kernels/emu/harness.cpp failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::rename(&tmp, &exe).expect("move the harness into place");
        exe
    })
}

/// A batch of buffers and launches for one harness run.
///
/// A buffer reaches the harness when a launch first names it, holding exactly the bytes that
/// launch declares it may touch (an input cut to that size), so the guard page after it faults
/// any access past the declared size: the tests check the launch descriptions' sizes, which the
/// CUDA path checks its buffers against.
struct Emu {
    dir: tempfile::TempDir,
    cmds: String,
    outs: Vec<String>,
    /// Inputs no launch has named yet.
    inputs: HashMap<String, Vec<u8>>,
    /// Outputs no launch has named yet, with the bytes the test reads back.
    outputs: HashMap<String, usize>,
    /// Buffers given to the harness, with their bytes.
    made: HashMap<String, usize>,
}

fn raw(t: &Tensor) -> Result<Vec<u8>> {
    let t = t.flatten_all()?;
    Ok(match t.dtype() {
        DType::F32 => t
            .to_vec1::<f32>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DType::BF16 => t
            .to_vec1::<half::bf16>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DType::F16 => t
            .to_vec1::<half::f16>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DType::U32 => t
            .to_vec1::<u32>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DType::U8 => t.to_vec1::<u8>()?,
        other => return Err(format!("no raw form for {other:?}").into()),
    })
}

impl Emu {
    fn new() -> Result<Self> {
        Ok(Self {
            dir: tempfile::tempdir()?,
            cmds: String::new(),
            outs: Vec::new(),
            inputs: HashMap::new(),
            outputs: HashMap::new(),
            made: HashMap::new(),
        })
    }

    fn bytes(&mut self, name: &str, data: &[u8]) -> Result<()> {
        self.inputs.insert(name.to_string(), data.to_vec());
        Ok(())
    }

    fn tensor(&mut self, name: &str, t: &Tensor) -> Result<()> {
        self.bytes(name, &raw(t)?)
    }

    /// An output buffer of `elems` elements of `dtype`, zeroed, saved after the run.
    fn out(&mut self, name: &str, elems: usize, dtype: DType) -> Result<()> {
        self.outputs
            .insert(name.to_string(), elems * dtype.size_in_bytes());
        self.outs.push(name.to_string());
        Ok(())
    }

    /// Hands buffer `name` to the harness with the `need` bytes a launch declares, or checks
    /// that the one already handed over holds them.
    fn make(&mut self, kernel: &str, name: &str, need: usize) -> Result<()> {
        if let Some(&have) = self.made.get(name) {
            if need > have {
                return Err(format!(
                    "{kernel}: reaches {need} bytes of {name}, which holds {have}"
                )
                .into());
            }
        } else if let Some(data) = self.inputs.remove(name) {
            if data.len() < need {
                return Err(format!(
                    "{kernel}: reaches {need} bytes of input {name}, which has {}",
                    data.len()
                )
                .into());
            }
            let path = self.dir.path().join(format!("{name}.in"));
            std::fs::write(&path, &data[..need])?;
            writeln!(self.cmds, "buf {name} {need} {}", path.display())?;
        } else if let Some(bytes) = self.outputs.remove(name) {
            if bytes != need {
                return Err(format!(
                    "{kernel}: declares {need} bytes of output {name}, the test reads {bytes}"
                )
                .into());
            }
            writeln!(self.cmds, "buf {name} {need} -")?;
        } else {
            return Err(format!("{kernel}: the test has no buffer {name}").into());
        }
        self.made.entry(name.to_string()).or_insert(need);
        Ok(())
    }

    /// Queues `l` as the CUDA path would launch it, its buffers by the names it gives them.
    fn launch(&mut self, l: &Launch) -> Result<()> {
        for &(name, need) in &l.sizes {
            self.make(&l.kernel, name, need)?;
        }
        let g = l.geometry;
        write!(
            self.cmds,
            "launch {} {} {} {} {} {} {} {}",
            l.kernel, g.grid.0, g.grid.1, g.grid.2, g.block.0, g.block.1, g.block.2, g.smem
        )?;
        for a in &l.args {
            match a {
                Arg::Buf(n) => write!(self.cmds, " @{n}")?,
                Arg::Null => write!(self.cmds, " null")?,
                Arg::I32(v) => write!(self.cmds, " i32:{v}")?,
                Arg::I64(v) => write!(self.cmds, " i64:{v}")?,
                Arg::U64(v) => write!(self.cmds, " u64:{v}")?,
                // Debug prints the shortest text that reads back to the same f32.
                Arg::F32(v) => write!(self.cmds, " f32:{v:?}")?,
            }
        }
        self.cmds.push('\n');
        Ok(())
    }

    /// Runs the batch; `Err` carries the harness's message.
    fn try_run(mut self) -> std::result::Result<Outputs, String> {
        let mut unused: Vec<&String> = self.inputs.keys().chain(self.outputs.keys()).collect();
        if !unused.is_empty() {
            unused.sort();
            return Err(format!("no launch uses the buffers {unused:?}"));
        }
        for name in &self.outs {
            let path = self.dir.path().join(format!("{name}.out"));
            writeln!(self.cmds, "save {name} {}", path.display()).expect("write to a String");
        }
        let cmd_path = self.dir.path().join("commands");
        std::fs::write(&cmd_path, &self.cmds).map_err(|e| e.to_string())?;
        let out = Command::new(harness())
            .arg(&cmd_path)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "{} ({})",
                String::from_utf8_lossy(&out.stderr).trim(),
                out.status
            ));
        }
        Ok(Outputs { emu: self })
    }

    fn run(self) -> Result<Outputs> {
        Ok(self.try_run()?)
    }
}

struct Outputs {
    emu: Emu,
}

impl Outputs {
    fn get(&self, name: &str, dtype: DType, shape: &[usize]) -> Result<Tensor> {
        let data = std::fs::read(self.emu.dir.path().join(format!("{name}.out")))?;
        Ok(Tensor::from_raw_buffer(&data, dtype, shape, &Device::Cpu)?)
    }
}

/// The kernel's result against the CPU implementation's: the same arithmetic, so they agree to
/// a unit or two in the last place of the dtype (summation order differs).
fn assert_same(what: &str, got: &Tensor, want: &Tensor) -> Result<()> {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let tol = match want.dtype() {
        DType::F32 => 1e-5,
        DType::F16 => 2e-3,
        _ => 1e-2,
    };
    let e = rel_err(&host(got)?, &host(want)?, |_| true);
    assert!(
        e <= tol,
        "{what}: the kernel differs from the CPU implementation by {e} (> {tol})"
    );
    Ok(())
}

const FLOATS: [DType; 3] = [DType::F32, DType::BF16, DType::F16];

#[test]
fn rms_norm_kernels_match_the_cpu_implementation() -> Result<()> {
    let dev = Device::Cpu;
    for dtype in FLOATS {
        for (rows, cols) in [(3, 64), (2, 1000), (2, 4500)] {
            for unit_offset in [false, true] {
                let what = format!("rms_norm {dtype:?} {rows}x{cols} unit_offset={unit_offset}");
                let x = (Tensor::randn(0f32, 1., (rows, cols), &dev)? * 3.)?.to_dtype(dtype)?;
                let w = Tensor::randn(0f32, 1., cols, &dev)?.to_dtype(dtype)?;
                let g = Tensor::randn(0f32, 1., (rows, cols), &dev)?.to_dtype(dtype)?;
                let eps = 1e-6f32;
                let mut emu = Emu::new()?;
                emu.tensor("x", &x)?;
                emu.tensor("w", &w)?;
                emu.tensor("g", &g)?;
                emu.out("y", rows * cols, dtype)?;
                emu.out("dx", rows * cols, dtype)?;
                emu.launch(&rms_norm::fwd_launch(dtype, rows, cols, eps, unit_offset)?)?;
                emu.launch(&rms_norm::bwd_launch(dtype, rows, cols, eps, unit_offset)?)?;
                let out = emu.run()?;
                let y = rms_norm::forward(&x, &w, eps as f64, unit_offset)?;
                let dx = rms_norm::backward(&x, &w, &g, eps as f64, unit_offset)?;
                assert_same(
                    &format!("{what} forward"),
                    &out.get("y", dtype, &[rows, cols])?,
                    &y,
                )?;
                assert_same(
                    &format!("{what} backward"),
                    &out.get("dx", dtype, &[rows, cols])?,
                    &dx,
                )?;
            }
        }
    }
    Ok(())
}

#[test]
fn rope_kernel_matches_the_cpu_implementation_on_a_strided_view() -> Result<()> {
    let dev = Device::Cpu;
    let (b, h, t, d) = (2, 3, 5, 64);
    for dtype in FLOATS {
        // [B, T, H, D] storage seen as [B, H, T, D], as the attention's transposed view is.
        let base = Tensor::randn(0f32, 1., (b, t, h, d), &dev)?.to_dtype(dtype)?;
        let x = base.transpose(1, 2)?;
        let angles = Tensor::rand(0f32, 6.3, (t, d), &dev)?;
        let (cos, sin) = (
            angles.cos()?.to_dtype(dtype)?,
            angles.sin()?.to_dtype(dtype)?,
        );
        let dims = [b, h, t, d];
        let strides: [usize; 4] = x.layout().stride().try_into()?;
        // The forward and backward launches both write `y`: one batch each.
        let run = |backward: bool| -> Result<Tensor> {
            let mut emu = Emu::new()?;
            emu.tensor("x", &base)?;
            emu.tensor("cos", &cos)?;
            emu.tensor("sin", &sin)?;
            emu.out("y", b * h * t * d, dtype)?;
            emu.launch(&rope::kernel_launch(dtype, dims, strides, backward)?)?;
            emu.run()?.get("y", dtype, &dims)
        };
        assert_same(
            &format!("rope {dtype:?} forward"),
            &run(false)?,
            &rope::forward(&x, &cos, &sin)?,
        )?;
        assert_same(
            &format!("rope {dtype:?} backward"),
            &run(true)?,
            &rope::backward(&x, &cos, &sin)?,
        )?;
    }
    Ok(())
}

#[test]
fn glu_kernels_match_the_cpu_implementation() -> Result<()> {
    let dev = Device::Cpu;
    let n = 1000;
    for dtype in FLOATS {
        for act in [MlpActivation::Silu, MlpActivation::GeluTanh] {
            let what = format!("glu {dtype:?} {act:?}");
            let g = (Tensor::randn(0f32, 1., n, &dev)? * 3.)?.to_dtype(dtype)?;
            let u = Tensor::randn(0f32, 1., n, &dev)?.to_dtype(dtype)?;
            let dy = Tensor::randn(0f32, 1., n, &dev)?.to_dtype(dtype)?;
            let mut emu = Emu::new()?;
            emu.tensor("g", &g)?;
            emu.tensor("u", &u)?;
            emu.tensor("dy", &dy)?;
            emu.out("y", n, dtype)?;
            emu.out("dg_du", 2 * n, dtype)?;
            emu.launch(&glu::fwd_launch(dtype, n, act)?)?;
            emu.launch(&glu::bwd_launch(dtype, n, act)?)?;
            let out = emu.run()?;
            assert_same(
                &format!("{what} forward"),
                &out.get("y", dtype, &[n])?,
                &glu::forward(&g, &u, act)?,
            )?;
            let (dg, du) = glu::backward(&g, &u, &dy, act)?;
            let both = out.get("dg_du", dtype, &[2, n])?;
            assert_same(&format!("{what} dg"), &both.get(0)?, &dg)?;
            assert_same(&format!("{what} du"), &both.get(1)?, &du)?;
        }
    }
    Ok(())
}

#[test]
fn cross_entropy_kernels_match_the_cpu_implementation() -> Result<()> {
    let dev = Device::Cpu;
    let (n, len, start) = (4, 1500, 3000);
    for dtype in FLOATS {
        for cap in [None, Some(30.0)] {
            let what = format!("cross-entropy {dtype:?} softcap {cap:?}");
            let logits = (Tensor::randn(0f32, 1., (n, len), &dev)? * 8.)?.to_dtype(dtype)?;
            // Rows 0 and 2 have their target in this block, rows 1 and 3 before and after it.
            let targets = Tensor::new(&[3007u32, 12, 4499, 9000], &dev)?;
            // Statistics of an earlier block, to fold into.
            let earlier = (Tensor::randn(0f32, 1., (n, 500), &dev)? * 8.)?.to_dtype(dtype)?;
            let stats0 = cross_entropy::block_stats(
                &cross_entropy::initial_stats(n, &dev)?,
                &earlier,
                &targets,
                0,
                cap,
            )?;
            let lse_grad = Tensor::new(
                &[[9.5f32, 0.25], [10.0, -1.0], [8.75, 0.5], [11.0, 2.0]],
                &dev,
            )?;
            let cap_f = cap.unwrap_or(0.0) as f32;
            let mut emu = Emu::new()?;
            emu.tensor("stats", &stats0)?;
            emu.tensor("logits", &logits)?;
            emu.tensor("targets", &targets)?;
            emu.tensor("lse_grad", &lse_grad)?;
            emu.out("stats_out", n * 3, DType::F32)?;
            emu.out("dl", n * len, dtype)?;
            emu.launch(&cross_entropy::stats_launch(dtype, n, len, start, cap_f)?)?;
            emu.launch(&cross_entropy::grad_launch(dtype, n, len, start, cap_f)?)?;
            let out = emu.run()?;
            let stats = cross_entropy::block_stats(&stats0, &logits, &targets, start, cap)?;
            let dl = cross_entropy::block_grad(&logits, &targets, &lse_grad, start, cap)?;
            // The statistics are f32 in both; the block's exp-sum order differs.
            let got = host(&out.get("stats_out", DType::F32, &[n, 3])?)?;
            let e = rel_err(&got, &host(&stats)?, |_| true);
            assert!(e < 1e-5, "{what}: statistics differ by {e}");
            assert_same(
                &format!("{what} gradient"),
                &out.get("dl", dtype, &[n, len])?,
                &dl,
            )?;
        }
    }
    Ok(())
}

#[test]
fn nf4_dequantize_kernel_matches_the_cpu_implementation() -> Result<()> {
    let dev = Device::Cpu;
    let (rows, cols) = (40, 512);
    let data: Vec<f32> = Tensor::randn(0f32, 0.02, rows * cols, &dev)?.to_vec1()?;
    let m = Nf4Matrix::quantize(&data, rows, cols)?;
    let on_cpu = nf4::Nf4Device::new(&m, &dev)?;
    for dtype in FLOATS {
        // Rows 7..33: a block range that starts and ends inside a 256-block absmax group.
        let (r0, n) = (7, 26);
        let (first, n_bytes) = (r0 * cols / 64, n * cols / 2);
        let mut emu = Emu::new()?;
        emu.bytes("codes", m.packed_codes())?;
        emu.bytes("absmax", m.absmax_codes())?;
        emu.bytes(
            "scales",
            &m.absmax_scales()
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<u8>>(),
        )?;
        emu.bytes(
            "lut",
            &dequant_tables()
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<u8>>(),
        )?;
        emu.out("out", n * cols, dtype)?;
        emu.launch(&nf4::dequant_launch(
            dtype,
            first,
            n_bytes,
            m.absmax_offset(),
        )?)?;
        let got = emu.run()?.get("out", dtype, &[n, cols])?;
        let want = on_cpu.dequantize_rows(r0, n, dtype)?;
        // Same products in f32, rounded once: bit for bit.
        let (got, want) = (raw(&got)?, raw(&want)?);
        assert_eq!(got.len(), want.len(), "nf4 {dtype:?}: size");
        if let Some(i) = got.iter().zip(&want).position(|(a, b)| a != b) {
            panic!(
                "nf4 {dtype:?}: the kernel's rows differ from byte {i} on (of {})",
                got.len()
            );
        }
    }
    Ok(())
}

#[test]
fn adamw_kernel_matches_the_cpu_implementation() -> Result<()> {
    let dev = Device::Cpu;
    let n = 1000;
    let p = Tensor::randn(0f32, 1., n, &dev)?;
    let g = Tensor::randn(0f32, 2., n, &dev)?;
    // m, then v (non-negative), then a row the kernel must not need.
    let state = Tensor::cat(
        &[
            Tensor::randn(0f32, 0.1, n, &dev)?,
            Tensor::rand(0f32, 0.01, n, &dev)?,
            Tensor::zeros(n, DType::F32, &dev)?,
        ],
        0,
    )?;
    let s = adamw::Scalars {
        coef: 0.75,
        b1: 0.9,
        one_minus_b1: 0.1,
        b2: 0.999,
        one_minus_b2: 1e-3,
        decay: 0.9995,
        inv_sqrt_bc2: 1.2,
        eps: 1e-8,
        step_size: 2e-3,
    };
    let mut emu = Emu::new()?;
    emu.tensor("p", &p)?;
    emu.tensor("g", &g)?;
    emu.tensor("state", &state)?;
    emu.out("out", 3 * n, DType::F32)?;
    emu.launch(&adamw::launch(n, &s))?;
    let got = emu.run()?.get("out", DType::F32, &[3 * n])?;
    let want = adamw::update(&p, &g, &state, &s)?.flatten_all()?;
    // Each value is the same sequence of correctly rounded f32 operations: bit for bit.
    let bits = |t: &Tensor| -> Result<Vec<u32>> {
        Ok(t.to_vec1::<f32>()?.iter().map(|x| x.to_bits()).collect())
    };
    assert!(
        bits(&got)? == bits(&want)?,
        "the AdamW kernel's update differs"
    );
    Ok(())
}

#[test]
fn dropout_kernel_matches_the_cpu_implementation() -> Result<()> {
    let dev = Device::Cpu;
    // Not a multiple of the block size; a key with high bits set (64-bit arguments).
    let (n, key, keep) = (5000, 0xDEAD_BEEF_0123_4567u64, 0.85);
    for dtype in FLOATS {
        let x = Tensor::randn(0f32, 1., n, &dev)?.to_dtype(dtype)?;
        let mut emu = Emu::new()?;
        emu.tensor("x", &x)?;
        emu.out("y", n, dtype)?;
        let scale = (1.0 / keep) as f32;
        emu.launch(&dropout::launch(
            dtype,
            n,
            key,
            dropout::threshold(keep),
            scale,
        )?)?;
        let got = emu.run()?.get("y", dtype, &[n])?;
        let want = dropout::apply_unfused(&x, key, keep, dtype)?;
        // One product per element, the same mask: bit for bit.
        assert!(
            raw(&got)? == raw(&want)?,
            "dropout {dtype:?}: the kernel's mask or scale differs"
        );
        let zeros = got
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?
            .iter()
            .filter(|v| **v == 0.0)
            .count();
        assert!(
            zeros > n / 20 && zeros < n / 4,
            "dropout {dtype:?}: {zeros} of {n} dropped"
        );
    }
    Ok(())
}

/// The flash-attention kernels (forward, then delta and backward on the forward's own o and lse,
/// launched as `src/kernels/attention.rs` launches them) in the shared check of `common/flash.rs`.
fn flash_on_the_emulator(c: &flash::Case, x: &flash::Inputs) -> Result<flash::Outputs> {
    let p = FlashParams {
        scale: x.scale,
        offset: c.offset,
        window: c.window,
    };
    let dims = Dims::check(&x.q, &x.k, &x.v, Some(&x.key_valid), &p)?;
    let Dims { b, h, tq, d, .. } = dims;
    let rows = b * h * tq;
    let mut emu = Emu::new()?;
    for (name, t) in [
        ("q", &x.q),
        ("k", &x.k),
        ("v", &x.v),
        ("g", &x.grad_o),
        ("key_valid", &x.key_valid),
    ] {
        emu.tensor(name, t)?;
    }
    if let Some(s) = &x.segment_starts {
        emu.tensor("segment_starts", s)?;
    }
    let packed = x.segment_starts.is_some();
    emu.out("o", rows * d, c.dtype)?;
    emu.out("lse", rows, DType::F32)?;
    emu.out("delta", rows, DType::F32)?;
    emu.out("dq", x.q.elem_count(), DType::F32)?;
    emu.out("dk", x.k.elem_count(), DType::F32)?;
    emu.out("dv", x.v.elem_count(), DType::F32)?;
    emu.launch(&attention::fwd_launch(c.dtype, &dims, &p, true, packed)?)?;
    emu.launch(&attention::delta_launch(c.dtype, &dims)?)?;
    emu.launch(&attention::bwd_launch(c.dtype, &dims, &p, true, packed)?)?;
    let out = emu.run()?;
    Ok(flash::Outputs {
        o: out.get("o", c.dtype, x.q.dims())?,
        lse: out.get("lse", DType::F32, &[b, h, tq])?,
        dq: out.get("dq", DType::F32, x.q.dims())?,
        dk: out.get("dk", DType::F32, x.k.dims())?,
        dv: out.get("dv", DType::F32, x.v.dims())?,
    })
}

#[test]
fn flash_attention_kernels_match_eager_attention_and_its_gradients() -> Result<()> {
    for c in flash::cases() {
        flash::check(&Device::Cpu, &c, |x| flash_on_the_emulator(&c, x))?;
    }
    Ok(())
}

/// The emulator's own checks fire: a launch with less shared memory than the kernel needs
/// traps (`check_smem`), and an argument of the wrong type is refused.
#[test]
fn the_emulator_reports_kernel_faults() -> Result<()> {
    let (b, h, tq, d) = (1, 1, 16, 64);
    let q = Tensor::zeros((b, h, tq, d), DType::BF16, &Device::Cpu)?;
    let p = FlashParams {
        scale: 0.125,
        offset: 0,
        window: None,
    };
    let dims = Dims::check(&q, &q, &q, None, &p)?;
    // The forward launch, with its shared memory cut by `smem_cut` bytes and its last argument
    // (the f32 scale) replaced by `last`.
    let build = |smem_cut: u32, last: Arg| -> Result<Emu> {
        let mut emu = Emu::new()?;
        for name in ["q", "k", "v"] {
            emu.tensor(name, &q)?;
        }
        emu.out("o", b * h * tq * d, DType::BF16)?;
        emu.out("lse", b * h * tq, DType::F32)?;
        let mut l = attention::fwd_launch(DType::BF16, &dims, &p, false, false)?;
        l.geometry.smem -= smem_cut;
        *l.args.last_mut().ok_or("no arguments")? = last;
        emu.launch(&l)?;
        Ok(emu)
    };
    build(0, Arg::F32(0.125))?.run()?;
    let err = build(16, Arg::F32(0.125))?
        .try_run()
        .err()
        .ok_or("a launch short of shared memory ran")?;
    assert!(err.contains("__trap()"), "{err}");
    let err = build(0, Arg::I32(1))?
        .try_run()
        .err()
        .ok_or("a wrongly typed argument was taken")?;
    assert!(
        err.contains("argument 13") && err.contains("takes f32"),
        "{err}"
    );

    // Two rows of 64 read from a buffer of one row: the read past its end faults.
    let mut emu = Emu::new()?;
    emu.bytes("x", &[0u8; 64 * 4])?;
    emu.bytes("w", &[0u8; 64 * 4])?;
    emu.out("y", 2 * 64, DType::F32)?;
    // Declared as one row (the CUDA path would refuse it before the launch).
    let mut l = rms_norm::fwd_launch(DType::F32, 2, 64, 1e-6, false)?;
    l.sizes[0].1 = 64 * 4;
    emu.launch(&l)?;
    let err = emu
        .try_run()
        .err()
        .ok_or("a read past a buffer went unnoticed")?;
    assert!(err.contains("segmentation fault"), "{err}");
    Ok(())
}
