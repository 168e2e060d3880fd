//! LoRA: the adaptable linear layer (frozen base plus optional low-rank A/B) and PEFT adapters.
//!
//! Model files build every projection as a [`Linear`]; adapters attach to those layers by
//! their HF module path, so no model file is forked to add LoRA (Hu et al. 2021, and PEFT's
//! `peft/tuners/lora/layer.py` for scaling and naming).

pub mod linear;
pub mod params;
pub mod peft;

pub use linear::{Linear, LoraWeights, Recompute};
pub use params::{LoraParam, LoraParams, LoraSpec, PROJECTIONS};
pub use peft::{load_peft_adapter, PeftAdapterConfig, TargetModules};

/// The factor on `B·A`: `alpha / r`, or `alpha / sqrt(r)` with rsLoRA (PEFT's
/// `LoraLayer.update_layer`). `r` is at least 1 wherever a rank is read; 0 counts as 1 here.
pub fn scale(alpha: f64, r: usize, use_rslora: bool) -> f64 {
    let r = r.max(1) as f64;
    if use_rslora {
        alpha / r.sqrt()
    } else {
        alpha / r
    }
}

/// The `target_modules` value that selects every name in [`PROJECTIONS`] (PEFT's spelling).
pub const ALL_LINEAR: &str = "all-linear";

/// The module names `target_modules` selects: `"all-linear"` expanded to [`PROJECTIONS`], in
/// order, without duplicates.
pub fn target_names(targets: &peft::TargetModules) -> Vec<String> {
    let given: Vec<&str> = match targets {
        peft::TargetModules::One(name) => vec![name.as_str()],
        peft::TargetModules::List(names) => names.iter().map(String::as_str).collect(),
    };
    let mut names: Vec<String> = Vec::new();
    for name in given {
        let expanded: Vec<&str> = if name == ALL_LINEAR {
            PROJECTIONS.to_vec()
        } else {
            vec![name]
        };
        for n in expanded {
            if !names.iter().any(|have| have == n) {
                names.push(n.to_string());
            }
        }
    }
    names
}
