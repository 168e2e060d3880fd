//! Writes a PEFT LoRA adapter folder: `adapter_config.json` + `adapter_model.safetensors`.
//!
//! Names follow PEFT's `get_peft_model_state_dict` (no adapter-name segment); weights are in
//! HF layout because the model loader already undid GGUF's q/k permutation. vLLM's default
//! `max_lora_rank` is 16, so a larger rank gets a warning.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Tensor};

use crate::fsutil::Artifact;
use crate::lora::{LoraParams, PeftAdapterConfig};
use crate::{Error, Result};

/// What goes into `adapter_config.json` beyond the LoRA hyper-parameters.
#[derive(Debug, Clone)]
pub struct AdapterExport {
    pub base_model_name_or_path: String,
    pub dtype: DType,
}

/// A PEFT adapter folder: the files [`write_adapter_files`] writes, and nothing else.
pub const ADAPTER: Artifact = Artifact {
    what: "an adapter folder",
    files: &[ADAPTER_CONFIG, ADAPTER_WEIGHTS],
    folders: &[],
};

/// The adapter's PEFT config file.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
/// The adapter's tensors.
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";

/// The SHA-256 of an adapter folder's weights file, hex; `None` when it cannot be read.
pub fn adapter_sha256(dir: &Path) -> Option<String> {
    let bytes = std::fs::read(dir.join(ADAPTER_WEIGHTS)).ok()?;
    Some(crate::fsutil::sha256_hex(&bytes))
}

/// Writes the adapter folder atomically (a temp folder, then a rename); a folder there that
/// holds anything but an adapter is refused (see [`Artifact::write`]).
pub fn write_adapter(params: &LoraParams, dir: &Path, export: &AdapterExport) -> Result<()> {
    ADAPTER.write(dir, false, |tmp| write_adapter_files(params, tmp, export))
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
        .to_file(&dir.join(ADAPTER_CONFIG))?;
    let st = dir.join(ADAPTER_WEIGHTS);
    candle_core::safetensors::save(&tensors, &st).map_err(|e| Error::model(&st, e.to_string()))?;
    Ok(())
}
