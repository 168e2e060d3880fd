//! Device selection: `auto`, `cpu`, `cuda:N` and `metal` opened by name, and the CUDA memory pool.
//! A CUDA build loads its libraries at run time (`cuda_libs`), so it runs on a machine without
//! a driver: `auto` falls back to the CPU, and `cuda:N` names the library it could not load.

pub mod cuda_libs;

use candle_core::Device;

use crate::config::DeviceName;
use crate::{Error, Result};

/// Parses a device name and opens it (see [`open`]).
pub fn parse_device(name: &str) -> Result<Device> {
    let parsed = name.parse::<DeviceName>().map_err(|_| {
        Error::Config(format!(
            "unknown device `{name}` (expected auto, cpu, cuda:N or metal)"
        ))
    })?;
    open(parsed)
}

/// Opens a device; `auto` tries cuda:0, then metal, then cpu.
pub fn open(name: DeviceName) -> Result<Device> {
    match name {
        DeviceName::Cpu => Ok(Device::Cpu),
        DeviceName::Auto => {
            if cfg!(feature = "cuda") {
                match cuda_libs::missing() {
                    None => {
                        if let Ok(d) = new_cuda(0) {
                            return Ok(single_stream(d));
                        }
                    }
                    Some(_) if !cuda_libs::driver_loaded() => {
                        tracing::info!("no CUDA driver found, using cpu")
                    }
                    Some(why) => tracing::warn!("{why}; using cpu"),
                }
            }
            if let Ok(d) = Device::new_metal(0) {
                return Ok(d);
            }
            Ok(Device::Cpu)
        }
        DeviceName::Metal => Device::new_metal(0)
            .map_err(|e| Error::Config(format!("device `metal` is not available: {e}"))),
        DeviceName::Cuda(idx) => {
            if !cfg!(feature = "cuda") {
                return Err(Error::Config(format!(
                    "device `{name}` is not available: this build has no CUDA (build it with \
                     scripts/build-cuda.sh, or use device = \"cpu\")"
                )));
            }
            if let Some(why) = cuda_libs::missing() {
                return Err(Error::Config(format!(
                    "device `{name}` is not available: {why}"
                )));
            }
            new_cuda(idx)
                .map(single_stream)
                .map_err(|e| Error::Config(format!("device `{name}` is not available: {e}")))
        }
    }
}

/// `Device::new_cuda`, with a panic inside cudarc turned into an error.
fn new_cuda(idx: usize) -> std::result::Result<Device, String> {
    std::panic::catch_unwind(|| Device::new_cuda(idx))
        .map_err(|_| "the CUDA runtime panicked while opening the device".to_string())?
        .map_err(|e| e.to_string())
}

/// A CUDA device without cudarc's cross-stream event tracking. cudarc creates two CUDA events
/// with every allocation (thousands per training step) but waits on or records them only in
/// its multi-stream mode, which candle's device never enters (it launches on the per-thread
/// default stream, which does not count as a stream of its own): they cost host time and do
/// nothing.
///
/// Its memory pool also keeps what it has reserved (see [`keep_pool_memory`]).
fn single_stream(d: Device) -> Device {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(c) = &d {
        // SAFETY: the events order work across cudarc streams only in multi-stream mode, which
        // no code here enters (nothing calls `new_stream`), so synchronization is unchanged.
        unsafe { c.disable_event_tracking() };
        if let Err(e) = keep_pool_memory(c) {
            tracing::warn!(
                "could not keep the CUDA memory pool's reserve ({e}); allocations may be slower"
            );
        }
    }
    d
}

/// cudarc allocates stream-ordered (`cuMemAllocAsync`) from the device's memory pool, whose
/// default release threshold of 0 hands every freed byte back to the driver at the next
/// synchronization, so each training step would map its working set again. With no threshold
/// the pool keeps its reserve for reuse, as PyTorch's caching allocators do; the reserve is
/// what `nvidia-smi` shows either way at the step's peak.
#[cfg(feature = "cuda")]
fn keep_pool_memory(c: &candle_core::CudaDevice) -> std::result::Result<(), String> {
    use candle_core::cuda_backend::cudarc::driver::{result, sys};
    let Some(pool) = memory_pool(c).map_err(|e| e.to_string())? else {
        return Ok(());
    };
    let mut threshold: u64 = u64::MAX;
    // SAFETY: the pool is valid (see `memory_pool`) and the release threshold attribute is a
    // cuuint64_t.
    unsafe {
        result::mem_pool::set_attribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            (&mut threshold as *mut u64).cast(),
        )
        .map_err(|e| e.to_string())
    }
}

/// The memory pool cudarc allocates from on `c` (the device's current one), or `None` where
/// cudarc does not allocate from a pool (no stream-ordered allocation).
#[cfg(feature = "cuda")]
fn memory_pool(
    c: &candle_core::CudaDevice,
) -> std::result::Result<
    Option<candle_core::cuda_backend::cudarc::driver::sys::CUmemoryPool>,
    candle_core::cuda_backend::cudarc::driver::DriverError,
> {
    let ctx = c.cuda_stream().context().clone();
    if !ctx.has_async_alloc() {
        return Ok(None);
    }
    // SAFETY: the device is the context's own.
    unsafe {
        candle_core::cuda_backend::cudarc::driver::result::device::get_mem_pool(ctx.cu_device())
    }
    .map(Some)
}

/// The most device memory the CUDA memory pool has held at once (bytes), where it can be
/// read: the figure to compare with `torch.cuda.max_memory_reserved`. `None` on other devices.
pub fn peak_reserved_bytes(d: &Device) -> Option<u64> {
    pool_stat(d, PoolStat::ReservedHigh)
}

/// The device memory the CUDA memory pool holds now (bytes), in use or kept for reuse; `None`
/// on other devices.
pub fn reserved_bytes(d: &Device) -> Option<u64> {
    pool_stat(d, PoolStat::Reserved)
}

/// The device memory in use on the whole CUDA device now (bytes), as the driver reports it
/// (total minus free, every process and the CUDA context included: what `nvidia-smi` shows);
/// `None` on other devices or where it cannot be read.
pub fn driver_used_bytes(d: &Device) -> Option<u64> {
    match d {
        #[cfg(feature = "cuda")]
        Device::Cuda(c) => {
            let (free, total) = c.cuda_stream().context().mem_get_info().ok()?;
            Some(total.saturating_sub(free) as u64)
        }
        _ => None,
    }
}

#[derive(Clone, Copy)]
enum PoolStat {
    Reserved,
    ReservedHigh,
}

fn pool_stat(d: &Device, stat: PoolStat) -> Option<u64> {
    match d {
        #[cfg(feature = "cuda")]
        Device::Cuda(c) => {
            use candle_core::cuda_backend::cudarc::driver::{result, sys};
            use sys::CUmemPool_attribute as A;
            let pool = memory_pool(c).ok()??;
            let attr = match stat {
                PoolStat::Reserved => A::CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT,
                PoolStat::ReservedHigh => A::CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH,
            };
            let mut v: u64 = 0;
            // SAFETY: the pool is valid (see `memory_pool`); these attributes are cuuint64_t.
            unsafe { result::mem_pool::get_attribute(pool, attr, (&mut v as *mut u64).cast()) }
                .ok()?;
            Some(v)
        }
        _ => {
            let _ = (d, stat);
            None
        }
    }
}

/// A short name for messages: `cpu`, `cuda:0`, `metal`.
pub fn device_name(d: &Device) -> String {
    match d {
        Device::Cpu => "cpu".into(),
        Device::Cuda(_) => "cuda".into(),
        Device::Metal(_) => "metal".into(),
    }
}
