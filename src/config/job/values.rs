//! Named values that the job file and the command line share: the compute dtype and the device.
//!
//! Each parses from its name (`FromStr`, which clap also uses) and writes its canonical name, so
//! `--dtype bfloat16` on the command line and `dtype = "bfloat16"` in a job file mean the same.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The compute dtype: `f32`, `bf16` or `f16` (also `float32`, `bfloat16`, `float16`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DtypeName {
    #[default]
    F32,
    Bf16,
    F16,
}

impl DtypeName {
    /// The canonical name.
    pub fn as_str(self) -> &'static str {
        match self {
            DtypeName::F32 => "f32",
            DtypeName::Bf16 => "bf16",
            DtypeName::F16 => "f16",
        }
    }

    /// The candle dtype.
    pub fn dtype(self) -> candle_core::DType {
        match self {
            DtypeName::F32 => candle_core::DType::F32,
            DtypeName::Bf16 => candle_core::DType::BF16,
            DtypeName::F16 => candle_core::DType::F16,
        }
    }

    /// The job file's check of a written name.
    pub fn check(name: &str) -> Result<(), String> {
        name.parse::<Self>().map(drop)
    }
}

impl FromStr for DtypeName {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        match name {
            "f32" | "float32" => Ok(DtypeName::F32),
            "bf16" | "bfloat16" => Ok(DtypeName::Bf16),
            "f16" | "float16" => Ok(DtypeName::F16),
            _ => Err(format!("must be f32, bf16 or f16 (got {name:?})")),
        }
    }
}

/// The device: `auto` (cuda:0, then Metal, then the CPU), `cpu`, `cuda` / `cuda:N`, or `metal`.
/// Whether it exists is checked when it is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceName {
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
    Metal,
}

impl DeviceName {
    /// The job file's check of a written name.
    pub fn check(name: &str) -> Result<(), String> {
        name.parse::<Self>().map(drop)
    }
}

impl FromStr for DeviceName {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        let cuda = |n: &str| {
            (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                .then(|| n.parse::<usize>().ok())
                .flatten()
        };
        match name {
            "auto" => Ok(DeviceName::Auto),
            "cpu" => Ok(DeviceName::Cpu),
            "metal" => Ok(DeviceName::Metal),
            "cuda" => Ok(DeviceName::Cuda(0)),
            _ => name
                .strip_prefix("cuda:")
                .and_then(cuda)
                .map(DeviceName::Cuda)
                .ok_or_else(|| format!("must be auto, cpu, cuda:N or metal (got {name:?})")),
        }
    }
}

macro_rules! named {
    ($($ty:ty),*) => {$(
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&String::from(*self))
            }
        }

        impl TryFrom<String> for $ty {
            type Error = String;

            fn try_from(name: String) -> Result<Self, String> {
                name.parse()
            }
        }

        /// Compares with a name as written (`job.model.dtype == "bf16"`).
        impl PartialEq<&str> for $ty {
            fn eq(&self, name: &&str) -> bool {
                name.parse::<$ty>().is_ok_and(|other| other == *self)
            }
        }
    )*};
}

named!(DtypeName, DeviceName);

impl From<DtypeName> for String {
    fn from(d: DtypeName) -> String {
        d.as_str().to_string()
    }
}

impl From<DeviceName> for String {
    fn from(d: DeviceName) -> String {
        match d {
            DeviceName::Auto => "auto".into(),
            DeviceName::Cpu => "cpu".into(),
            DeviceName::Cuda(n) => format!("cuda:{n}"),
            DeviceName::Metal => "metal".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtype_and_device_names_parse_and_print_canonically() {
        for (name, canonical) in [("float32", "f32"), ("bfloat16", "bf16"), ("f16", "f16")] {
            assert_eq!(name.parse::<DtypeName>().unwrap().to_string(), canonical);
        }
        assert!("fp32".parse::<DtypeName>().is_err());
        for (name, canonical) in [("cuda", "cuda:0"), ("cuda:3", "cuda:3"), ("auto", "auto")] {
            assert_eq!(name.parse::<DeviceName>().unwrap().to_string(), canonical);
        }
        for bad in ["gpu", "cuda:", "cuda:x", "cuda:-1"] {
            assert!(bad.parse::<DeviceName>().is_err(), "{bad}");
        }
    }
}
