//! A checkpoint's adapter copied out in PEFT format (optionally in another dtype), or merged
//! into its base model as full HF safetensors that transformers loads.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::peft::{ADAPTER, ADAPTER_CONFIG, ADAPTER_WEIGHTS};
use crate::fsutil::Artifact;
use crate::lora::load_peft_adapter;
use crate::model::{load, LoadOptions};
use crate::{Error, Result};

/// A merged model folder: the files [`merge_to_hf`] writes, and nothing else.
pub const MERGED_MODEL: Artifact = Artifact {
    what: "a merged model folder",
    files: &[
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ],
    folders: &[],
};

/// Copies `adapter_config.json` and the adapter tensors (converted to `dtype`) to `to`, which
/// must be absent, empty or an adapter folder unless `force`.
pub fn copy_adapter(from: &Path, to: &Path, dtype: DType, force: bool) -> Result<()> {
    ADAPTER.check(to, force)?;
    let st = from.join(ADAPTER_WEIGHTS);
    let tensors = candle_core::safetensors::load(&st, &Device::Cpu)
        .map_err(|e| Error::model(&st, format!("not a valid safetensors file: {e}")))?;
    let tensors: HashMap<String, Tensor> = tensors
        .into_iter()
        .map(|(k, v)| Ok((k, v.to_dtype(dtype)?)))
        .collect::<Result<_>>()?;
    let cfg = std::fs::read(from.join(ADAPTER_CONFIG))
        .map_err(|e| Error::io(from.join(ADAPTER_CONFIG), e))?;
    ADAPTER.write(to, force, |tmp| {
        std::fs::write(tmp.join(ADAPTER_CONFIG), &cfg)
            .map_err(|e| Error::io(tmp.join(ADAPTER_CONFIG), e))?;
        let out = tmp.join(ADAPTER_WEIGHTS);
        candle_core::safetensors::save(&tensors, &out)
            .map_err(|e| Error::model(&out, e.to_string()))
    })
}

fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        _ => "float32",
    }
}

/// Loads `base`, applies the adapter, and writes config.json, model.safetensors and the
/// tokenizer files into `out`, which must be absent, empty or a merged model folder unless
/// `force` (checked before the model loads).
pub fn merge_to_hf(
    base: &str,
    adapter: &Path,
    out: &Path,
    dtype: DType,
    force: bool,
) -> Result<()> {
    MERGED_MODEL.check(out, force)?;
    let mut m = load(base, &LoadOptions::default())?;
    load_peft_adapter(m.model.as_mut(), adapter, DType::F32, &Device::Cpu)?;
    let tensors: HashMap<String, Tensor> = m
        .model
        .merged_state_dict()?
        .into_iter()
        .map(|(k, v)| Ok((k, v.to_dtype(dtype)?)))
        .collect::<Result<_>>()?;
    let config = m.config.to_hf_json(dtype_name(dtype));
    MERGED_MODEL.write(out, force, |tmp| {
        let write_json = |name: &str, v: &serde_json::Value| -> Result<()> {
            let text = serde_json::to_string_pretty(v).map_err(|source| Error::Json {
                what: name.into(),
                source,
            })?;
            std::fs::write(tmp.join(name), text).map_err(|e| Error::io(tmp.join(name), e))
        };
        write_json("config.json", &config)?;
        let st = tmp.join("model.safetensors");
        let mut meta = HashMap::new();
        meta.insert("format".to_string(), "pt".to_string());
        save_with_metadata(&tensors, &st, meta)?;
        m.tokenizer
            .inner
            .save(tmp.join("tokenizer.json"), false)
            .map_err(|e| Error::Tokenizer(format!("cannot save tokenizer.json: {e}")))?;
        let mut tc = serde_json::json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "chat_template": m.template.source(),
            "clean_up_tokenization_spaces": false,
        });
        if let Some(b) = &m.tokenizer.bos_token {
            tc["bos_token"] = b.clone().into();
        }
        if let Some(e) = &m.tokenizer.eos_token {
            tc["eos_token"] = e.clone().into();
        }
        write_json("tokenizer_config.json", &tc)?;
        write_json(
            "generation_config.json",
            &serde_json::json!({ "eos_token_id": m.tokenizer.eos_token_ids }),
        )
    })
}

fn save_with_metadata(
    tensors: &HashMap<String, Tensor>,
    path: &Path,
    meta: HashMap<String, String>,
) -> Result<()> {
    // candle's `save` writes no metadata; transformers wants {"format": "pt"}.
    let mut views = Vec::new();
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    for n in names {
        let t = tensors[n].to_device(&Device::Cpu)?.contiguous()?;
        views.push((n.clone(), t));
    }
    let data: Vec<(String, Vec<u8>, safetensors::Dtype, Vec<usize>)> = views
        .into_iter()
        .map(|(n, t)| {
            let dt = match t.dtype() {
                DType::BF16 => safetensors::Dtype::BF16,
                DType::F16 => safetensors::Dtype::F16,
                _ => safetensors::Dtype::F32,
            };
            let t = if matches!(t.dtype(), DType::BF16 | DType::F16) {
                t
            } else {
                t.to_dtype(DType::F32)?
            };
            let bytes = tensor_bytes(&t)?;
            Ok((n, bytes, dt, t.dims().to_vec()))
        })
        .collect::<Result<_>>()?;
    let views: Vec<(String, safetensors::tensor::TensorView)> = data
        .iter()
        .map(|(n, b, dt, shape)| {
            safetensors::tensor::TensorView::new(*dt, shape.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| Error::Msg(e.to_string()))
        })
        .collect::<Result<_>>()?;
    safetensors::serialize_to_file(views, Some(meta), path)
        .map_err(|e| Error::model(path, e.to_string()))
}

fn tensor_bytes(t: &Tensor) -> Result<Vec<u8>> {
    Ok(match t.dtype() {
        DType::BF16 => t
            .flatten_all()?
            .to_vec1::<half::bf16>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DType::F16 => t
            .flatten_all()?
            .to_vec1::<half::f16>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        _ => t
            .flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
    })
}
