//! The `[model] quantize` setting: how the frozen base is stored while training.

use candle_core::quantized::GgmlDType;
use serde::{Deserialize, Serialize};

/// How frozen projection weights are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Quantize {
    /// Dense in the model dtype (a GGUF base is dequantized at load).
    #[default]
    #[serde(rename = "none")]
    None,
    /// A GGUF base keeps the quantized blocks of its file.
    #[serde(rename = "gguf")]
    Gguf,
    /// bitsandbytes' 4-bit NormalFloat, blocks of 64, double-quantized scales.
    #[serde(rename = "nf4")]
    Nf4,
    /// GGML Q4_0: blocks of 32 with an f16 scale (4.5 bits per weight).
    #[serde(rename = "q4_0")]
    Q4_0,
    /// GGML Q4_K: super-blocks of 256 with 6-bit sub-block scales and mins (4.5 bits).
    #[serde(rename = "q4k")]
    Q4K,
    /// GGML Q8_0: blocks of 32 with an f16 scale (8.5 bits).
    #[serde(rename = "q8_0")]
    Q8_0,
}

impl Quantize {
    pub const NAMES: &'static [&'static str] = &["none", "gguf", "nf4", "q4_0", "q4k", "q8_0"];

    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Gguf => "gguf",
            Self::Nf4 => "nf4",
            Self::Q4_0 => "q4_0",
            Self::Q4K => "q4k",
            Self::Q8_0 => "q8_0",
        }
    }

    /// The GGML block type this setting quantizes to, if it is one.
    pub fn ggml(self) -> Option<GgmlDType> {
        match self {
            Self::Q4_0 => Some(GgmlDType::Q4_0),
            Self::Q4K => Some(GgmlDType::Q4K),
            Self::Q8_0 => Some(GgmlDType::Q8_0),
            _ => None,
        }
    }

    /// Whether weights are kept quantized at all.
    pub fn is_quantized(self) -> bool {
        self != Self::None
    }

    /// Bits per stored weight, scales included; `dtype_bytes` is the model dtype's size, which
    /// dense weights keep.
    pub fn bits_per_weight(self, dtype_bytes: usize) -> f64 {
        match self {
            Self::None => 8.0 * dtype_bytes as f64,
            Self::Nf4 => 4.13,
            Self::Q4_0 | Self::Q4K => 4.5,
            // A GGUF file mixes 4-to-8-bit blocks; Q4_K_M averages about 5.
            Self::Gguf => 5.0,
            Self::Q8_0 => 8.5,
        }
    }

    /// The number of input features a row must be a multiple of.
    pub fn row_multiple(self) -> usize {
        match self {
            Self::None | Self::Gguf => 1,
            Self::Nf4 => super::nf4::NF4_BLOCK,
            Self::Q4_0 | Self::Q8_0 => 32,
            Self::Q4K => 256,
        }
    }
}

impl std::fmt::Display for Quantize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
