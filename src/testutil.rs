//! Helpers shared by the unit tests.

use candle_core::Tensor;

use crate::data::TokenizedExample;

/// Largest absolute elementwise difference of two tensors of the same shape, as f32.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> candle_core::Result<f32> {
    (a - b)?
        .abs()?
        .max_all()?
        .to_dtype(candle_core::DType::F32)?
        .to_scalar::<f32>()
}

/// An example of tokens `0..len` whose targets are the positions in `targets`.
pub fn example(len: usize, targets: std::ops::Range<usize>) -> TokenizedExample {
    TokenizedExample {
        input_ids: (0..len as u32).collect(),
        targets: (0..len).map(|i| targets.contains(&i)).collect(),
    }
}
