//! Launch geometry of the kernels (grid, block, dynamic shared memory), shared by the CUDA
//! launches and the kernel emulator tests (`tests/kernel_emu.rs`, which run `kernels/*.cu` on
//! the CPU with the geometry a GPU would get). Plain numbers: no CUDA types.

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
