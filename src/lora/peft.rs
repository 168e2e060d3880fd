//! PEFT LoRA adapters: `adapter_config.json` and `adapter_model.safetensors`, named as PEFT
//! saves them (`base_model.model.<module>.lora_A.weight`, no adapter-name segment), which is
//! also what vLLM loads (`vllm/lora/peft_helper.py`, `vllm/lora/utils.py`).

use std::collections::{HashMap, HashSet};
use std::path::Path;

use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};

use super::params::lora_scale;
use super::{Adaptable, LoraParams, LoraWeights};
use crate::{Error, Result};

/// `target_modules` is either a list of names or a single string (`"all-linear"` or a regex).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum TargetModules {
    List(Vec<String>),
    One(String),
}

impl TargetModules {
    /// The names as written: the one string, or each of the list.
    pub fn written(&self) -> Vec<&str> {
        match self {
            TargetModules::One(name) => vec![name.as_str()],
            TargetModules::List(names) => names.iter().map(String::as_str).collect(),
        }
    }
}

/// PEFT's `LoraConfig` as written to `adapter_config.json` (the fields we read or write).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeftAdapterConfig {
    #[serde(default)]
    pub peft_type: Option<String>,
    #[serde(default)]
    pub task_type: Option<String>,
    pub r: usize,
    pub lora_alpha: f64,
    #[serde(default)]
    pub lora_dropout: f64,
    pub target_modules: TargetModules,
    #[serde(default)]
    pub use_rslora: bool,
    #[serde(default)]
    pub use_dora: bool,
    #[serde(default)]
    pub bias: Option<String>,
    #[serde(default)]
    pub fan_in_fan_out: bool,
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    /// `true`, `false` or an init scheme's name (`"gaussian"`, `"pissa"`, ...); read, not used.
    #[serde(default = "init_lora_weights_default")]
    pub init_lora_weights: serde_json::Value,
    #[serde(default)]
    pub inference_mode: bool,
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    #[serde(default)]
    pub revision: Option<String>,
    #[serde(default)]
    pub layers_to_transform: Option<serde_json::Value>,
    #[serde(default)]
    pub layers_pattern: Option<serde_json::Value>,
    #[serde(default)]
    pub rank_pattern: HashMap<String, serde_json::Value>,
    #[serde(default)]
    pub alpha_pattern: HashMap<String, serde_json::Value>,
}

/// PEFT's default for `init_lora_weights`.
fn init_lora_weights_default() -> serde_json::Value {
    serde_json::Value::Bool(true)
}

/// The names PEFT saves a module's `A` and `B` under (`get_peft_model_state_dict`):
/// `base_model.model.{module}.lora_A.weight` and `...lora_B.weight`.
pub fn peft_tensor_names(module: &str) -> (String, String) {
    (
        format!("base_model.model.{module}.lora_A.weight"),
        format!("base_model.model.{module}.lora_B.weight"),
    )
}

/// What a `target_modules` regex for a multimodal checkpoint's language model starts with: a
/// plain `q_proj` would also match the vision tower's projections.
const LANGUAGE_MODEL_TARGETS: &str = r"model\.language_model\.layers\.\d+\.(self_attn|mlp)\.(";

/// The `target_modules` regex that selects the projections named `names` in the language model
/// only (PEFT matches a string `target_modules` with `re.fullmatch` on module names).
pub fn language_model_targets(names: &[String]) -> String {
    format!("{LANGUAGE_MODEL_TARGETS}{})", names.join("|"))
}

/// The projection names a [`language_model_targets`] regex selects, or `None` for any other
/// string.
pub fn language_model_target_names(regex: &str) -> Option<Vec<String>> {
    let names = regex
        .strip_prefix(LANGUAGE_MODEL_TARGETS)?
        .strip_suffix(')')?;
    let names: Vec<String> = names.split('|').map(str::to_string).collect();
    names
        .iter()
        .all(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .then_some(names)
}

/// A Hub id's revision goes in PEFT's own `revision` field, not in the name
/// (`org/name@v2` → `org/name`, `v2`); a local path or a plain id stays as it is.
fn split_revision(base: &str) -> (String, Option<String>) {
    match crate::hub::HubSpec::parse(base) {
        Some(spec) if base.contains('@') && !Path::new(base).exists() => {
            (spec.repo, Some(spec.revision))
        }
        _ => (base.to_string(), None),
    }
}

impl PeftAdapterConfig {
    /// The config PEFT would write for `params`, whose base model is named `base`: the targets
    /// are the adapted modules' last path segments, as a list, or, when the modules sit in a
    /// multimodal checkpoint's language model, as a regex limited to it.
    pub fn for_params(params: &LoraParams, base: &str) -> Self {
        let mut targets: Vec<String> = params
            .params
            .iter()
            .filter_map(|p| p.module.rsplit('.').next())
            .map(str::to_string)
            .collect();
        targets.sort_unstable();
        targets.dedup();
        let in_language_model = !params.params.is_empty()
            && params
                .params
                .iter()
                .all(|p| p.module.starts_with("model.language_model.layers."));
        let target_modules = if in_language_model {
            TargetModules::One(language_model_targets(&targets))
        } else {
            TargetModules::List(targets)
        };
        let (base, revision) = split_revision(base);
        Self {
            peft_type: Some("LORA".into()),
            task_type: Some("CAUSAL_LM".into()),
            r: params.spec.r,
            lora_alpha: params.spec.alpha,
            lora_dropout: params.spec.dropout,
            target_modules,
            use_rslora: params.spec.use_rslora,
            use_dora: false,
            bias: Some("none".into()),
            fan_in_fan_out: false,
            modules_to_save: None,
            init_lora_weights: init_lora_weights_default(),
            inference_mode: true,
            base_model_name_or_path: Some(base),
            revision,
            layers_to_transform: None,
            layers_pattern: None,
            rank_pattern: HashMap::new(),
            alpha_pattern: HashMap::new(),
        }
    }

    /// The base model as `lora-train` names it: `base_model_name_or_path`, with `@revision`
    /// when the config pins one.
    pub fn base_model(&self) -> Option<String> {
        let base = self.base_model_name_or_path.clone()?;
        Some(match self.revision.as_deref().filter(|r| !r.is_empty()) {
            Some(rev) => format!("{base}@{rev}"),
            None => base,
        })
    }

    /// The LoRA scale of this adapter ([`lora_scale`]).
    pub fn scale(&self) -> f64 {
        lora_scale(self.lora_alpha, self.r, self.use_rslora)
    }

    /// Writes the config as pretty-printed JSON to `path`.
    pub fn to_file(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| Error::Msg(format!("adapter config: {e}")))?;
        std::fs::write(path, text).map_err(|e| Error::io(path, e))
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let cfg: Self = serde_json::from_str(&text)
            .map_err(|e| Error::model(path, format!("invalid adapter config: {e}")))?;
        let unsupported = |what: &str| Err(Error::model(path, format!("{what} is not supported")));
        if let Some(t) = &cfg.peft_type {
            if t != "LORA" {
                return unsupported(&format!("peft_type `{t}` (only LORA)"));
            }
        }
        if cfg.r == 0 {
            return Err(Error::model(path, "`r` must be at least 1"));
        }
        if cfg.use_dora {
            return unsupported("use_dora");
        }
        if cfg.fan_in_fan_out {
            return unsupported("fan_in_fan_out");
        }
        if !cfg.rank_pattern.is_empty() || !cfg.alpha_pattern.is_empty() {
            return unsupported("rank_pattern/alpha_pattern");
        }
        if cfg.modules_to_save.as_ref().is_some_and(|m| !m.is_empty()) {
            return unsupported("modules_to_save");
        }
        if cfg.bias.as_deref().is_some_and(|b| b != "none") {
            return unsupported("bias other than \"none\"");
        }
        Ok(cfg)
    }
}

/// Loads a PEFT adapter folder onto `model`'s projections; returns how many were adapted.
pub fn load_peft_adapter(
    model: &mut dyn Adaptable,
    dir: &Path,
    dtype: DType,
    device: &Device,
) -> Result<usize> {
    let cfg = PeftAdapterConfig::from_file(&dir.join("adapter_config.json"))?;
    let st_path = dir.join("adapter_model.safetensors");
    if !st_path.is_file() {
        return Err(Error::model(
            dir,
            "no adapter_model.safetensors (adapter_model.bin is not supported)",
        ));
    }
    let tensors = candle_core::safetensors::load(&st_path, device)
        .map_err(|e| Error::model(&st_path, format!("not a valid safetensors file: {e}")))?;
    // Older PEFT versions wrote `.lora_A.default.weight`.
    let tensors: HashMap<String, candle_core::Tensor> = tensors
        .into_iter()
        .map(|(k, v)| (k.replace(".default.weight", ".weight"), v))
        .collect();
    let mut used = HashSet::new();
    let scale = cfg.scale();
    let mut adapted = 0;
    for (path, linear) in model.linears_mut() {
        let (ka, kb) = peft_tensor_names(&path);
        let (Some(a), Some(b)) = (tensors.get(&ka), tensors.get(&kb)) else {
            continue;
        };
        let (out, inp) = linear.shape();
        if a.dims() != [cfg.r, inp] || b.dims() != [out, cfg.r] {
            return Err(Error::model(
                &st_path,
                format!(
                    "`{path}`: lora_A {:?} / lora_B {:?} do not fit a [{out}, {inp}] layer with r={}",
                    a.dims(),
                    b.dims(),
                    cfg.r
                ),
            ));
        }
        linear.set_lora(Some(LoraWeights::frozen(
            a.to_dtype(dtype)?,
            b.to_dtype(dtype)?,
            scale,
        )));
        used.insert(ka);
        used.insert(kb);
        adapted += 1;
    }
    let mut unused: Vec<&String> = tensors.keys().filter(|k| !used.contains(*k)).collect();
    if !unused.is_empty() {
        unused.sort();
        return Err(Error::model(
            &st_path,
            format!(
                "{} tensors match no layer of this model (first: `{}`); was the adapter trained on another base?",
                unused.len(),
                unused[0]
            ),
        ));
    }
    if adapted == 0 {
        return Err(Error::model(&st_path, "the adapter holds no LoRA weights"));
    }
    Ok(adapted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hub_revision_goes_in_peft_s_revision_field() {
        assert_eq!(
            split_revision("Qwen/Qwen2.5-0.5B-Instruct@v1.0"),
            (
                "Qwen/Qwen2.5-0.5B-Instruct".to_string(),
                Some("v1.0".to_string())
            )
        );
        assert_eq!(split_revision("org/name"), ("org/name".to_string(), None));
        assert_eq!(
            split_revision("models/smollm2.gguf"),
            ("models/smollm2.gguf".to_string(), None)
        );
        let cfg = PeftAdapterConfig {
            base_model_name_or_path: Some("org/name".into()),
            revision: Some("refs/pr/1".into()),
            ..serde_json::from_str(r#"{"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}"#)
                .unwrap()
        };
        assert_eq!(cfg.base_model().unwrap(), "org/name@refs/pr/1");
    }

    #[test]
    fn language_model_targets_read_back_as_their_names() {
        let names: Vec<String> = ["down_proj", "q_proj"].map(String::from).to_vec();
        let regex = language_model_targets(&names);
        assert_eq!(
            regex,
            r"model\.language_model\.layers\.\d+\.(self_attn|mlp)\.(down_proj|q_proj)"
        );
        assert_eq!(language_model_target_names(&regex), Some(names));
        assert_eq!(language_model_target_names("q_proj"), None);
        assert_eq!(
            language_model_target_names(
                r"model\.language_model\.layers\.\d+\.(self_attn|mlp)\.(.*)"
            ),
            None
        );
    }
}
