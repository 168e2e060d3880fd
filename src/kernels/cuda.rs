//! Loading and launching the PTX kernels of `kernels/*.cu` on candle's CUDA device.

use std::sync::Arc;

use candle_core::cuda_backend::cudarc::driver::{
    CudaFunction, CudaSlice, CudaStream, CudaView, LaunchArgs, LaunchConfig,
};
use candle_core::cuda_backend::CudaStorageSlice;
use candle_core::{CudaDevice, CudaStorage, DType, Layout};

use super::launch::Geometry;

/// The PTX of each `kernels/*.cu`, one `&str` per file (`RMS_NORM`, `ROPE`, ...).
pub mod ptx {
    include!(concat!(env!("OUT_DIR"), "/kernels_ptx.rs"));
}

/// A loaded kernel and the device's stream it launches on (candle's own `CudaFunc` is not
/// exported).
pub struct KernelFn {
    func: CudaFunction,
    stream: Arc<CudaStream>,
}

impl KernelFn {
    /// A launch builder on the device's stream.
    pub fn builder(&self) -> LaunchArgs<'_> {
        self.stream.launch_builder(&self.func)
    }
}

/// Loads `name` from the PTX module `module` (cached by the device after the first call).
pub fn load_func(
    dev: &CudaDevice,
    module: &'static str,
    ptx: &'static str,
    name: &str,
) -> candle_core::Result<KernelFn> {
    let func = dev.get_or_load_custom_func(name, module, ptx)?;
    Ok(KernelFn {
        func: func.into_cuda_function(),
        stream: dev.cuda_stream(),
    })
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

/// The contiguous view of a slice under `layout`.
pub fn view<'a, T>(
    s: &'a CudaSlice<T>,
    layout: &Layout,
    op: &str,
) -> candle_core::Result<CudaView<'a, T>> {
    match layout.contiguous_offsets() {
        Some((a, b)) => Ok(s.slice(a..b)),
        None => candle_core::bail!("{op}: the input is not contiguous"),
    }
}

/// One block of `threads` per row.
pub fn rows_config(rows: usize, threads: u32) -> LaunchConfig {
    config(super::launch::rows(rows, threads))
}

/// A grid-stride launch over `n` elements.
pub fn elems_config(n: usize) -> LaunchConfig {
    config(super::launch::elems(n))
}

pub use super::launch::row_threads;

/// The launch configuration of a [`Geometry`].
pub fn config(g: Geometry) -> LaunchConfig {
    LaunchConfig {
        grid_dim: g.grid,
        block_dim: g.block,
        shared_mem_bytes: g.smem,
    }
}

/// Wraps a result slice as candle storage.
pub fn storage(slice: CudaStorageSlice, dev: &CudaDevice) -> CudaStorage {
    CudaStorage {
        slice,
        device: dev.clone(),
    }
}

/// Runs `$body` with `$s` bound to the typed slice of a float CUDA storage and `$T` to its
/// element type; `$wrap` rebuilds a `CudaStorageSlice` of that type.
macro_rules! cuda_float_dispatch {
    ($st:expr, $op:expr, |$s:ident : $T:ident, $wrap:ident| $body:expr) => {
        match &$st.slice {
            candle_core::cuda_backend::CudaStorageSlice::F32($s) => {
                type $T = f32;
                let $wrap = candle_core::cuda_backend::CudaStorageSlice::F32;
                $body
            }
            candle_core::cuda_backend::CudaStorageSlice::BF16($s) => {
                type $T = half::bf16;
                let $wrap = candle_core::cuda_backend::CudaStorageSlice::BF16;
                $body
            }
            candle_core::cuda_backend::CudaStorageSlice::F16($s) => {
                type $T = half::f16;
                let $wrap = candle_core::cuda_backend::CudaStorageSlice::F16;
                $body
            }
            _ => candle_core::bail!("{}: CUDA kernels take f32, bf16 or f16", $op),
        }
    };
}
pub(crate) use cuda_float_dispatch;

/// Launches `func` with `cfg` and the arguments in order, each a variable (device views and
/// slices, or scalars bound beforehand) borrowed for the launch.
macro_rules! launch {
    ($func:expr, $cfg:expr, [$($arg:ident),+ $(,)?]) => {{
        use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
        use candle_core::cuda_backend::WrapErr;
        let mut b = $func.builder();
        $(b.arg(&$arg);)+
        // SAFETY: each caller passes its kernel's arguments in the order and with the types of
        // the kernel's signature in `kernels/*.cu`, and buffers of the sizes the kernel reads.
        unsafe { b.launch($cfg) }.w()
    }};
}
pub(crate) use launch;
