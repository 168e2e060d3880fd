//! Helpers shared by the unit tests.

use candle_core::Tensor;

/// Largest absolute elementwise difference of two tensors of the same shape, as f32.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> candle_core::Result<f32> {
    (a - b)?
        .abs()?
        .max_all()?
        .to_dtype(candle_core::DType::F32)?
        .to_scalar::<f32>()
}
