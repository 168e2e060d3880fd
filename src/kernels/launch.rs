//! Kernel launches described without CUDA types: the entry point, the geometry (grid, block,
//! dynamic shared memory) and the arguments in the order of the kernel's parameters, with
//! buffers by name. Each op builds its [`Launch`] with a plain function (`rms_norm::fwd_launch`,
//! ...) that the CUDA path launches through `kernels::cuda::Bufs` and the kernel emulator tests
//! (`tests/it/kernel_emu.rs`, `kernels/*.cu` on the CPU) run as they are, so the emulator checks the
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
    /// The bytes each named buffer must hold: all the kernel may touch from the pointer on.
    pub sizes: Vec<(&'static str, usize)>,
}

impl Launch {
    /// A launch of `kernel` with no arguments yet; add them in order with [`Launch::buf`] and
    /// the scalar methods.
    pub fn new(kernel: String, geometry: Geometry) -> Self {
        Self {
            kernel,
            geometry,
            args: Vec::new(),
            sizes: Vec::new(),
        }
    }

    /// A buffer argument the kernel may touch `bytes` of.
    pub fn buf(mut self, name: &'static str, bytes: usize) -> Self {
        self.args.push(Arg::Buf(name));
        self.sizes.push((name, bytes));
        self
    }

    /// A buffer argument when `bytes` is given, else a null pointer.
    pub fn buf_or_null(self, name: &'static str, bytes: Option<usize>) -> Self {
        match bytes {
            Some(b) => self.buf(name, b),
            None => self.arg(Arg::Null),
        }
    }

    pub fn arg(mut self, a: Arg) -> Self {
        self.args.push(a);
        self
    }

    /// An `int` argument.
    pub fn i32(self, v: i32) -> Self {
        self.arg(Arg::I32(v))
    }

    /// A `size_t` argument.
    pub fn u64(self, n: usize) -> Self {
        self.arg(Arg::U64(n as u64))
    }

    /// A `long long` argument.
    pub fn i64(self, v: i64) -> Self {
        self.arg(Arg::I64(v))
    }

    pub fn f32(self, v: f32) -> Self {
        self.arg(Arg::F32(v))
    }

    /// The bytes buffer `name` must hold.
    pub fn size_of(&self, name: &str) -> Option<usize> {
        self.sizes.iter().find(|(n, _)| *n == name).map(|&(_, b)| b)
    }

    /// The arguments with each named buffer replaced by its pointer in `bufs` (name, pointer,
    /// bytes it holds). Every buffer the launch names must be given, with at least the bytes
    /// the launch needs, and every given buffer must be named by the launch.
    pub fn bind<P: Copy>(&self, bufs: &[(&str, P, usize)]) -> Result<Vec<Arg<P>>, String> {
        for &(name, _, bytes) in bufs {
            match self.size_of(name) {
                None => return Err(format!("{}: takes no buffer named {name:?}", self.kernel)),
                Some(need) if bytes < need => {
                    return Err(format!(
                        "{}: buffer {name:?} holds {bytes} bytes, the launch reaches {need}",
                        self.kernel
                    ))
                }
                Some(_) => {}
            }
        }
        self.args
            .iter()
            .map(|a| {
                Ok(match *a {
                    Arg::Buf(name) => match bufs.iter().find(|(n, _, _)| *n == name) {
                        Some(&(_, p, _)) => Arg::Buf(p),
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
        other => {
            candle_core::bail!("unsupported dtype {other:?}: CUDA kernels take f32, bf16 or f16")
        }
    })
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
        Launch::new("k".into(), elems(10))
            .buf("x", 40)
            .arg(Arg::Null)
            .i32(3)
            .buf("y", 8)
            .f32(0.5)
    }

    #[test]
    fn bind_puts_each_buffer_in_its_place() {
        let got = sample().bind(&[("y", 20u64, 8), ("x", 10, 64)]).unwrap();
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
    fn bind_refuses_missing_unknown_and_short_buffers() {
        let err = sample().bind(&[("x", 1u64, 40)]).unwrap_err();
        assert!(err.contains("no buffer \"y\""), "{err}");
        let err = sample()
            .bind(&[("x", 1u64, 40), ("y", 2, 8), ("z", 3, 8)])
            .unwrap_err();
        assert!(err.contains("no buffer named \"z\""), "{err}");
        let err = sample().bind(&[("x", 1u64, 39), ("y", 2, 8)]).unwrap_err();
        assert!(
            err.contains("\"x\" holds 39 bytes, the launch reaches 40"),
            "{err}"
        );
    }

    #[test]
    fn suffixes_name_the_float_types_only() {
        assert_eq!(suffix(DType::BF16).unwrap(), "bf16");
        assert_eq!(suffix(DType::F16).unwrap(), "f16");
        assert_eq!(suffix(DType::F32).unwrap(), "f32");
        assert!(suffix(DType::U8).is_err());
    }
}
