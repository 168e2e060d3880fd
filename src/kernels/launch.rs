//! Kernel launches described without CUDA types: the entry point, the geometry (grid, block,
//! dynamic shared memory) and the arguments in the order of the kernel's parameters, with
//! buffers by name. Each op builds its [`Launch`] with a plain function (`rms_norm::fwd_launch`,
//! ...) that the CUDA path launches through `kernels::cuda::Bufs` and the kernel emulator tests
//! (`tests/kernel_emu.rs`, `kernels/*.cu` on the CPU) run as they are, so the emulator checks the
//! Rust side's entry points, argument order, scalar values and geometry along with the kernels.

use candle_core::DType;

/// One kernel argument: a buffer (`B` is its name in a [`Launch`], its device pointer once
/// bound), a null pointer, or a scalar of the kernel parameter's type.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Arg<B = &'static str> {
    Buf(B),
    Null,
    I32(i32),
    I64(i64),
    U64(u64),
    F32(f32),
}

/// One kernel launch.
#[derive(Debug, Clone, PartialEq)]
pub struct Launch {
    /// The entry point (`rms_norm_fwd_bf16`).
    pub kernel: String,
    pub geometry: Geometry,
    /// In the order of the kernel's parameters.
    pub args: Vec<Arg>,
}

impl Launch {
    /// The arguments with each named buffer replaced by its entry in `bufs`. Every buffer the
    /// launch names must be given, and every given buffer must be named by the launch.
    pub fn bind<P: Copy>(&self, bufs: &[(&str, P)]) -> Result<Vec<Arg<P>>, String> {
        if let Some((unused, _)) = bufs
            .iter()
            .find(|(n, _)| !self.args.contains(&Arg::Buf(*n)))
        {
            return Err(format!("{}: takes no buffer named {unused:?}", self.kernel));
        }
        self.args
            .iter()
            .map(|a| {
                Ok(match *a {
                    Arg::Buf(name) => match bufs.iter().find(|(n, _)| *n == name) {
                        Some(&(_, p)) => Arg::Buf(p),
                        None => return Err(format!("{}: no buffer {name:?} given", self.kernel)),
                    },
                    Arg::Null => Arg::Null,
                    Arg::I32(v) => Arg::I32(v),
                    Arg::I64(v) => Arg::I64(v),
                    Arg::U64(v) => Arg::U64(v),
                    Arg::F32(v) => Arg::F32(v),
                })
            })
            .collect()
    }
}

/// The suffix of a kernel's entry point for `dtype` (`rms_norm_fwd_bf16`).
pub fn suffix(dtype: DType) -> candle_core::Result<&'static str> {
    Ok(match dtype {
        DType::F32 => "f32",
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        other => candle_core::bail!("no CUDA kernel for {other:?}"),
    })
}

/// An `i32` kernel argument from a size that the op has checked fits.
pub fn i32_arg(n: usize) -> Arg {
    Arg::I32(n as i32)
}

/// A `size_t` kernel argument.
pub fn u64_arg(n: usize) -> Arg {
    Arg::U64(n as u64)
}

/// One kernel launch's grid and block (x, y, z) and dynamic shared memory in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
    pub smem: u32,
}

/// One block of `threads` per row.
pub fn rows(rows: usize, threads: u32) -> Geometry {
    Geometry {
        grid: (rows as u32, 1, 1),
        block: (threads, 1, 1),
        smem: 0,
    }
}

/// A grid-stride launch over `n` elements.
pub fn elems(n: usize) -> Geometry {
    let threads = 256u32;
    let blocks = n.div_ceil(threads as usize).clamp(1, 65535 * 8) as u32;
    Geometry {
        grid: (blocks, 1, 1),
        block: (threads, 1, 1),
        smem: 0,
    }
}

/// Threads per row for a row-reduction kernel over `cols` columns.
pub fn row_threads(cols: usize) -> u32 {
    match cols {
        0..=256 => 64,
        257..=1024 => 128,
        1025..=4096 => 256,
        _ => 512,
    }
}

/// Threads of every flash-attention block (`FLASH_THREADS` in `kernels/attention.cu`).
pub const FLASH_THREADS: u32 = 128;

/// Forward tiles (query rows, keys) per head dim, as `FwdCfg` in the kernel.
fn flash_fwd_tiles(d: usize) -> (usize, usize) {
    if d == 256 {
        (64, 32)
    } else {
        (64, 64)
    }
}

/// Backward tiles (query rows, keys) per head dim, as `BwdCfg` in the kernel.
fn flash_bwd_tiles(d: usize) -> (usize, usize) {
    match d {
        64 => (64, 64),
        128 => (32, 64),
        _ => (32, 32),
    }
}

/// `flash_fwd_{d}_*` over `b · h` heads of `tq` queries: a block per head and query tile, and
/// the kernel's shared memory (bf16/f16 tiles with rows padded by 8 elements, a key mask).
pub fn flash_fwd(b: usize, h: usize, tq: usize, d: usize) -> Geometry {
    let (br, bc) = flash_fwd_tiles(d);
    Geometry {
        grid: ((b * h) as u32, tq.div_ceil(br) as u32, 1),
        block: (FLASH_THREADS, 1, 1),
        smem: ((br + 2 * bc) * (d + 8) * 2 + bc) as u32,
    }
}

/// `flash_bwd_delta_*` over `rows` rows: a warp per row.
pub fn flash_bwd_delta(rows: usize) -> Geometry {
    Geometry {
        grid: (rows.div_ceil(4) as u32, 1, 1),
        block: (FLASH_THREADS, 1, 1),
        smem: 0,
    }
}

/// `flash_bwd_{d}_*` over `b · h` heads of `tk` keys: a block per query head and key tile.
pub fn flash_bwd(b: usize, h: usize, tk: usize, d: usize) -> Geometry {
    let (br, bc) = flash_bwd_tiles(d);
    Geometry {
        grid: ((b * h) as u32, tk.div_ceil(bc) as u32, 1),
        block: (FLASH_THREADS, 1, 1),
        smem: ((2 * bc + 2 * br) * (d + 8) * 2 + bc * (br + 8) * 2 + 2 * br * 4 + bc) as u32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Launch {
        Launch {
            kernel: "k".into(),
            geometry: elems(10),
            args: vec![
                Arg::Buf("x"),
                Arg::Null,
                Arg::I32(3),
                Arg::Buf("y"),
                Arg::F32(0.5),
            ],
        }
    }

    #[test]
    fn bind_puts_each_buffer_in_its_place() {
        let got = sample().bind(&[("y", 20u64), ("x", 10)]).unwrap();
        assert_eq!(
            got,
            vec![
                Arg::Buf(10),
                Arg::Null,
                Arg::I32(3),
                Arg::Buf(20),
                Arg::F32(0.5)
            ]
        );
    }

    #[test]
    fn bind_refuses_missing_and_unknown_buffers() {
        let err = sample().bind(&[("x", 1u64)]).unwrap_err();
        assert!(err.contains("no buffer \"y\""), "{err}");
        let err = sample()
            .bind(&[("x", 1u64), ("y", 2), ("z", 3)])
            .unwrap_err();
        assert!(err.contains("no buffer named \"z\""), "{err}");
    }

    #[test]
    fn suffixes_name_the_float_types_only() {
        assert_eq!(suffix(DType::BF16).unwrap(), "bf16");
        assert_eq!(suffix(DType::F16).unwrap(), "f16");
        assert_eq!(suffix(DType::F32).unwrap(), "f32");
        assert!(suffix(DType::U8).is_err());
    }
}
