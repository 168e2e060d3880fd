//! Writes a PEFT LoRA adapter folder: `adapter_config.json` + `adapter_model.safetensors`.
//!
//! Names follow PEFT's `get_peft_model_state_dict` (no adapter-name segment); weights are in
//! HF layout because the model loader already undid GGUF's q/k permutation. vLLM's default
//! `max_lora_rank` is 16, so a larger rank gets a warning.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Tensor};

use crate::fsutil::atomic_dir;
use crate::lora::{LoraParams, PeftAdapterConfig};
use crate::{Error, Result};

/// What goes into `adapter_config.json` beyond the LoRA hyper-parameters.
#[derive(Debug, Clone)]
pub struct AdapterExport {
    pub base_model_name_or_path: String,
    pub dtype: DType,
}

/// Writes the adapter folder atomically (a temp folder, then a rename).
pub fn write_adapter(params: &LoraParams, dir: &Path, export: &AdapterExport) -> Result<()> {
    atomic_dir(dir, |tmp| write_adapter_files(params, tmp, export))
}

/// Writes `adapter_config.json` and `adapter_model.safetensors` into an existing folder.
pub fn write_adapter_files(params: &LoraParams, dir: &Path, export: &AdapterExport) -> Result<()> {
    if params.spec.r > 16 {
        tracing::warn!(
            "r = {} is above vLLM's default max_lora_rank (16): start vLLM with --max-lora-rank {}",
            params.spec.r,
            [32, 64, 128, 256, 320, 512]
                .into_iter()
                .find(|v| *v >= params.spec.r)
                .unwrap_or(512)
        );
    }
    let tensors: HashMap<String, Tensor> = params
        .peft_tensors()?
        .into_iter()
        .map(|(k, v)| Ok((k, v.to_dtype(export.dtype)?)))
        .collect::<Result<_>>()?;
    PeftAdapterConfig::for_params(params, &export.base_model_name_or_path)
        .to_file(&dir.join("adapter_config.json"))?;
    let st = dir.join("adapter_model.safetensors");
    candle_core::safetensors::save(&tensors, &st).map_err(|e| Error::model(&st, e.to_string()))?;
    Ok(())
}
