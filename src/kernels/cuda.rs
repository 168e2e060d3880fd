//! Loading and launching the PTX kernels of `kernels/*.cu` on candle's CUDA device.

use std::sync::Arc;

use candle_core::cuda_backend::cudarc::driver::{
    CudaFunction, CudaSlice, CudaStream, CudaView, DevicePtr, DevicePtrMut, LaunchArgs,
    LaunchConfig, PushKernelArg, SyncOnDrop,
};
use candle_core::cuda_backend::CudaStorageSlice;
use candle_core::cuda_backend::WrapErr;
use candle_core::{CudaDevice, CudaStorage, Layout};

use super::launch::{Arg, Geometry, Launch};

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
    fn builder(&self) -> LaunchArgs<'_> {
        self.stream.launch_builder(&self.func)
    }
}

/// Loads `launch.kernel` from the PTX module `module` (cached by the device after the first
/// call).
pub fn load(
    dev: &CudaDevice,
    module: &'static str,
    ptx: &'static str,
    launch: &Launch,
) -> candle_core::Result<KernelFn> {
    let func = dev.get_or_load_custom_func(&launch.kernel, module, ptx)?;
    Ok(KernelFn {
        func: func.into_cuda_function(),
        stream: dev.cuda_stream(),
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

/// The launch configuration of a [`Geometry`].
fn config(g: Geometry) -> LaunchConfig {
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

/// A null device pointer argument.
static NULL_PTR: u64 = 0;

/// The buffers of one launch: each name of the [`Launch`] bound to a device slice or view,
/// with cudarc's stream-ordering guards, which live until the launch is queued.
pub struct Bufs<'a> {
    func: &'a KernelFn,
    /// Name, device pointer, bytes from the pointer on.
    ptrs: Vec<(&'static str, u64, usize)>,
    guards: Vec<SyncOnDrop<'a>>,
}

impl<'a> Bufs<'a> {
    pub fn new(func: &'a KernelFn) -> Self {
        Self {
            func,
            ptrs: Vec::new(),
            guards: Vec::new(),
        }
    }

    /// A buffer the kernel only reads.
    pub fn read<T, B: DevicePtr<T>>(&mut self, name: &'static str, buf: &'a B) -> &mut Self {
        let bytes = buf.len() * std::mem::size_of::<T>();
        let (ptr, guard) = buf.device_ptr(&self.func.stream);
        self.ptrs.push((name, ptr, bytes));
        self.guards.push(guard);
        self
    }

    /// A buffer the kernel writes (and may read).
    pub fn write<T, B: DevicePtrMut<T>>(
        &mut self,
        name: &'static str,
        buf: &'a mut B,
    ) -> &mut Self {
        let bytes = buf.len() * std::mem::size_of::<T>();
        let (ptr, guard) = buf.device_ptr_mut(&self.func.stream);
        self.ptrs.push((name, ptr, bytes));
        self.guards.push(guard);
        self
    }

    /// Launches the kernel as `launch` describes, with these buffers.
    pub fn launch(self, launch: &Launch) -> candle_core::Result<()> {
        let args = launch.bind(&self.ptrs).map_err(candle_core::Error::Msg)?;
        let mut b = self.func.builder();
        for a in &args {
            match a {
                Arg::Buf(p) => b.arg(p),
                Arg::Null => b.arg(&NULL_PTR),
                Arg::I32(v) => b.arg(v),
                Arg::I64(v) => b.arg(v),
                Arg::U64(v) => b.arg(v),
                Arg::F32(v) => b.arg(v),
            };
        }
        // SAFETY: `launch` comes from the op's `*_launch` function, whose arguments follow the
        // kernel's signature in `kernels/*.cu` (the emulator tests run the same descriptions
        // against the kernels' parameter types), and each caller binds buffers of the sizes the
        // kernel reads and writes.
        unsafe { b.launch(config(launch.geometry)) }.w()?;
        // The guards record the buffers' use on the stream now that the launch is queued.
        drop(self.guards);
        Ok(())
    }
}
