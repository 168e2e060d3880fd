//! The device's measured matmul peak, the denominator of MFU: square products of the compute
//! dtype on the training device, timed in windows for at least a given time, the best window
//! kept (as `bench_gpu_peft.py peak` does with torch.matmul), so that MFU is measured against
//! what this device reaches here rather than a datasheet figure.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::Result;

/// What the probe measured.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MatmulPeak {
    /// The best window's rate, in TFLOP/s.
    pub peak_tflops: f64,
    /// The product, as `n x n x n dtype`.
    pub matmul: String,
    /// Products timed, over all windows.
    pub products: usize,
    /// Time spent in timed windows.
    pub seconds: f64,
}

/// The side of the probe's square matrices: large enough to keep the device's matmul units
/// busy (8192 as the Python probe on a GPU), small enough for a CPU to run several a second.
pub fn probe_size(device: &Device) -> usize {
    match device {
        Device::Cpu => 1024,
        _ => 8192,
    }
}

/// Multiplies two `n × n` matrices of `dtype` on `device` for at least `min_seconds` of timed
/// windows (after one untimed product) and returns the best window's rate.
pub fn matmul_peak(
    device: &Device,
    dtype: DType,
    n: usize,
    min_seconds: f64,
) -> Result<MatmulPeak> {
    let a = Tensor::randn(0f32, 1.0, (n, n), device)?.to_dtype(dtype)?;
    let b = Tensor::randn(0f32, 1.0, (n, n), device)?.to_dtype(dtype)?;
    let flops = 2.0 * (n as f64).powi(3);
    crate::gemm::matmul(&a, &b)?;
    device.synchronize()?;
    // Windows of about a tenth of the probe, sized from one timed product.
    let clock = Instant::now();
    crate::gemm::matmul(&a, &b)?;
    device.synchronize()?;
    let one = clock.elapsed().as_secs_f64().max(1e-9);
    let per_window = ((min_seconds / 10.0 / one).ceil() as usize).max(1);
    let (mut best, mut products, mut seconds) = (flops / one, 1, one);
    while seconds < min_seconds {
        let clock = Instant::now();
        for _ in 0..per_window {
            crate::gemm::matmul(&a, &b)?;
        }
        device.synchronize()?;
        let s = clock.elapsed().as_secs_f64().max(1e-9);
        best = best.max(flops * per_window as f64 / s);
        products += per_window;
        seconds += s;
    }
    Ok(MatmulPeak {
        peak_tflops: best / 1e12,
        matmul: format!("{n}x{n}x{n} {}", dtype_name(dtype)),
        products,
        seconds,
    })
}

fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "f32",
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_runs_for_its_time_and_gives_a_positive_rate() {
        let p = matmul_peak(&Device::Cpu, DType::F32, 64, 0.05).unwrap();
        assert!(p.seconds >= 0.05, "{p:?}");
        assert!(p.peak_tflops > 0.0 && p.peak_tflops.is_finite(), "{p:?}");
        assert!(p.products >= 2, "{p:?}");
        assert_eq!(p.matmul, "64x64x64 f32");
    }
}
