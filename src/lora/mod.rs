//! LoRA: the adaptable linear layer (frozen base plus optional low-rank A/B) and PEFT adapters.
//!
//! Model files build every projection as a [`Linear`]; adapters attach to those layers by
//! their HF module path, so no model file is forked to add LoRA (Hu et al. 2021, and PEFT's
//! `peft/tuners/lora/layer.py` for scaling and naming).

pub mod adaptable;
pub mod linear;
pub mod params;
pub mod peft;

pub use adaptable::Adaptable;
pub use linear::{AdapterSwitch, Linear, LoraWeights, Recompute};
pub use params::{
    lora_scale, target_names, LoraParam, LoraParams, LoraSpec, ALL_LINEAR, PROJECTIONS,
};
pub use peft::{load_peft_adapter, peft_tensor_names, PeftAdapterConfig, TargetModules};
