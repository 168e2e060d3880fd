//! Device selection: `auto`, `cpu`, `cuda:N`, `metal`, and dtypes by name.

use candle_core::{DType, Device};

use crate::{Error, Result};

/// Parses a device name; `auto` tries cuda:0, then metal, then cpu.
pub fn parse_device(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "auto" => {
            if let Ok(d) = Device::new_cuda(0) {
                return Ok(single_stream(d));
            }
            if let Ok(d) = Device::new_metal(0) {
                return Ok(d);
            }
            Ok(Device::Cpu)
        }
        "metal" => Device::new_metal(0)
            .map_err(|e| Error::Config(format!("device `metal` is not available: {e}"))),
        other => {
            let idx = other
                .strip_prefix("cuda:")
                .or_else(|| (other == "cuda").then_some("0"))
                .and_then(|i| i.parse::<usize>().ok())
                .ok_or_else(|| {
                    Error::Config(format!(
                        "unknown device `{other}` (expected auto, cpu, cuda:N or metal)"
                    ))
                })?;
            Device::new_cuda(idx).map(single_stream).map_err(|e| {
                Error::Config(format!(
                    "device `{other}` is not available (is this a --features cuda build on a GPU host?): {e}"
                ))
            })
        }
    }
}

/// A CUDA device without cudarc's cross-stream event tracking. cudarc creates two CUDA events
/// with every allocation (thousands per training step) but waits on or records them only in
/// its multi-stream mode, which candle's device never enters (it launches on the per-thread
/// default stream, which does not count as a stream of its own): they cost host time and do
/// nothing.
fn single_stream(d: Device) -> Device {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(c) = &d {
        // SAFETY: the events order work across cudarc streams only in multi-stream mode, which
        // no code here enters (nothing calls `new_stream`), so synchronization is unchanged.
        unsafe { c.disable_event_tracking() };
    }
    d
}

/// A short name for messages: `cpu`, `cuda:0`, `metal`.
pub fn device_name(d: &Device) -> String {
    match d {
        Device::Cpu => "cpu".into(),
        Device::Cuda(_) => "cuda".into(),
        Device::Metal(_) => "metal".into(),
    }
}

/// Parses `f32`, `bf16` or `f16`.
pub fn parse_dtype(name: &str) -> Result<DType> {
    match name {
        "f32" | "float32" => Ok(DType::F32),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        "f16" | "float16" => Ok(DType::F16),
        other => Err(Error::Config(format!(
            "unknown dtype `{other}` (expected f32, bf16 or f16)"
        ))),
    }
}
