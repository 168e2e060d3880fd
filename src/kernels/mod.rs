//! Fused ops for the memory-bound steps of LoRA training, each a candle custom op with a CUDA
//! kernel (`kernels/*.cu`, compiled to PTX by `build.rs` under `cuda`) and a CPU implementation of
//! the same arithmetic, which CI tests against the unfused path it replaces. The model fuses only
//! on CUDA (and uses the CPU's [`softmax`] rows); tests run its fused paths on the CPU inside
//! [`with_fused_on_cpu`]. `LORA_TRAIN_KERNELS` switches them ([`parse_switches`]): `off`, or names
//! to turn on (`rms_norm,rope`) or off (`-attention`). See DEVELOPERS.md, "Fused kernels".

pub mod adamw;
pub mod attention;
pub mod cross_entropy;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod dropout;
pub mod glu;
pub mod launch;
pub mod nf4;
pub mod rms_norm;
pub mod rope;
pub mod softmax;

use std::sync::OnceLock;

use candle_core::{CpuStorage, Device, Layout, WithDType};

use crate::{Error, Result};

/// The fused kernels, each with its own switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    RmsNorm,
    Rope,
    Glu,
    CrossEntropy,
    Attention,
    Nf4,
    Adamw,
    Dropout,
}

impl Kernel {
    pub const ALL: [Kernel; 8] = [
        Kernel::RmsNorm,
        Kernel::Rope,
        Kernel::Glu,
        Kernel::CrossEntropy,
        Kernel::Attention,
        Kernel::Nf4,
        Kernel::Adamw,
        Kernel::Dropout,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kernel::RmsNorm => "rms_norm",
            Kernel::Rope => "rope",
            Kernel::Glu => "glu",
            Kernel::CrossEntropy => "cross_entropy",
            Kernel::Attention => "attention",
            Kernel::Nf4 => "nf4",
            Kernel::Adamw => "adamw",
            Kernel::Dropout => "dropout",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// Parses a `LORA_TRAIN_KERNELS` value into the set of kernels that are on (a bit mask).
pub fn parse_switches(spec: &str) -> Result<u8> {
    let all = Kernel::ALL.iter().fold(0u8, |m, k| m | k.bit());
    let spec = spec.trim();
    match spec.to_ascii_lowercase().as_str() {
        "" | "on" | "all" | "1" | "true" => return Ok(all),
        "off" | "none" | "0" | "false" => return Ok(0),
        _ => {}
    }
    let items: Vec<&str> = spec
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    // A list of names only turns those on; a list of `-name`s turns those off from "all".
    let mut mask = if items.iter().all(|s| s.starts_with('-')) {
        all
    } else {
        0
    };
    for item in items {
        let (off, name) = match item.strip_prefix('-') {
            Some(n) => (true, n),
            None => (false, item),
        };
        let k = Kernel::ALL
            .iter()
            .find(|k| k.name() == name)
            .ok_or_else(|| {
                Error::Config(format!(
                    "LORA_TRAIN_KERNELS: unknown kernel `{name}` (expected on, off, or a comma list of {})",
                    Kernel::ALL.map(Kernel::name).join(", ")
                ))
            })?;
        if off {
            mask &= !k.bit();
        } else {
            mask |= k.bit();
        }
    }
    Ok(mask)
}

fn switches() -> u8 {
    static SWITCHES: OnceLock<u8> = OnceLock::new();
    *SWITCHES.get_or_init(|| {
        let spec = std::env::var("LORA_TRAIN_KERNELS").unwrap_or_default();
        parse_switches(&spec).unwrap_or_else(|e| {
            tracing::warn!("{e}; all kernels stay on");
            parse_switches("on").unwrap_or(0)
        })
    })
}

/// Whether `kernel`'s switch is on.
pub fn enabled(kernel: Kernel) -> bool {
    switches() & kernel.bit() != 0
}

thread_local! {
    static FUSED_ON_CPU: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with the fused ops' CPU implementations standing in for the kernels on the CPU
/// (on this thread only), so that the model's fused paths (their wiring, their gradients,
/// checkpoint replays through them) are tested without a GPU. The flash-attention kernel has no
/// CPU implementation: attention stays unfused.
pub fn with_fused_on_cpu<R>(f: impl FnOnce() -> R) -> R {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            FUSED_ON_CPU.with(|c| c.set(self.0));
        }
    }
    let _reset = Reset(FUSED_ON_CPU.with(|c| c.replace(true)));
    f()
}

/// Whether the model should run `kernel` on `device`: on CUDA with its switch on (or on the
/// CPU inside [`with_fused_on_cpu`]).
pub fn use_fused(kernel: Kernel, device: &Device) -> bool {
    let on_device = (cfg!(feature = "cuda") && device.is_cuda())
        || (device.is_cpu() && FUSED_ON_CPU.with(|c| c.get()));
    on_device && enabled(kernel)
}

/// The kernels that are on, for logs: `rms_norm, rope, ...` or `none`.
pub fn describe() -> String {
    let on: Vec<&str> = Kernel::ALL
        .iter()
        .filter(|k| enabled(**k))
        .map(|k| k.name())
        .collect();
    if on.is_empty() {
        "none".into()
    } else {
        on.join(", ")
    }
}

/// The contiguous elements of a CPU storage's view.
pub(crate) fn cpu_view<'a, T: WithDType>(
    s: &'a CpuStorage,
    l: &Layout,
    op: &str,
) -> candle_core::Result<&'a [T]> {
    let data = T::cpu_storage_as_slice(s)?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{op}: the input is not contiguous"),
    }
}

/// An error unless two inputs of `op` have the same shape.
pub(crate) fn same_shape(a: &Layout, b: &Layout, op: &str) -> candle_core::Result<()> {
    if a.dims() != b.dims() {
        candle_core::bail!("{op}: shapes {:?} and {:?} differ", a.dims(), b.dims());
    }
    Ok(())
}

/// Floats the fused ops compute in, read from and written to their storage dtype.
pub(crate) trait Float: WithDType {
    fn f(self) -> f32;
    fn of(v: f32) -> Self;
}

impl Float for f32 {
    fn f(self) -> f32 {
        self
    }
    fn of(v: f32) -> Self {
        v
    }
}

impl Float for half::bf16 {
    fn f(self) -> f32 {
        self.to_f32()
    }
    fn of(v: f32) -> Self {
        half::bf16::from_f32(v)
    }
}

impl Float for half::f16 {
    fn f(self) -> f32 {
        self.to_f32()
    }
    fn of(v: f32) -> Self {
        half::f16::from_f32(v)
    }
}

/// `v` rounded through `T`, as a tensor stored in `T` would hold it.
pub(crate) fn round_to<T: Float>(v: f32) -> f32 {
    T::of(v).f()
}

/// Runs `$body` with `$T` bound to the float type of a CPU storage (f32, bf16 or f16).
macro_rules! cpu_float_dispatch {
    ($s:expr, $op:expr, $T:ident => $body:expr) => {
        match $s.dtype() {
            candle_core::DType::F32 => {
                type $T = f32;
                $body
            }
            candle_core::DType::BF16 => {
                type $T = half::bf16;
                $body
            }
            candle_core::DType::F16 => {
                type $T = half::f16;
                $body
            }
            other => candle_core::bail!("{}: unsupported dtype {other:?}", $op),
        }
    };
}
pub(crate) use cpu_float_dispatch;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switches_parse() -> Result<()> {
        let all = parse_switches("on")?;
        assert_eq!(all.count_ones(), 8);
        assert_eq!(parse_switches("off")?, 0);
        assert_eq!(parse_switches("")?, all);
        assert_eq!(
            parse_switches("rms_norm,rope")?,
            Kernel::RmsNorm.bit() | Kernel::Rope.bit()
        );
        assert_eq!(
            parse_switches("-attention")?,
            all & !Kernel::Attention.bit()
        );
        let err = parse_switches("rms_norm,flash").unwrap_err().to_string();
        assert!(err.contains("unknown kernel `flash`"), "{err}");
        Ok(())
    }
}
