//! Frozen weights by their Hugging Face names, from safetensors or from a GGUF file.
//!
//! GGUF tensors are dequantized and converted to the HF layout at load: llama.cpp permutes
//! Llama's q/k rows for interleaved rope (`convert_hf_to_gguf.py`, `LlamaModel.permute`) and
//! stores Gemma's (2 and 3) norm weights with the `+1` folded in. Undoing both here means the model
//! code, and every adapter trained on it, sees one layout: the one PEFT and vLLM expect.
//! Qwen2 and Qwen3 (`Qwen2Model`, `Qwen3Model`) are written as HF stores them: no permutation
//! (transformers' GGUF reader, too, reverses it for `llama` only).

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use std::sync::Arc;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};

use crate::lora::Linear;
use crate::quant::{FrozenWeight, QuantWeight, Quantize};
use crate::{Error, Result};

/// How GGUF tensor names and layouts map to HF ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgufFlavor {
    /// `llama`: q/k permuted, `ffn_norm` is `post_attention_layernorm`.
    Llama { n_head: usize, n_kv_head: usize },
    /// `qwen2`, `qwen3`: Llama's names (and `attn_{q,k}_norm`, biases), nothing permuted.
    Qwen,
    /// `gemma2`, `gemma3`: norms stored as `1 + w`, four norms per layer.
    Gemma,
}

/// Where a multimodal checkpoint (`Gemma3ForConditionalGeneration`) keeps its text tower: the
/// model code asks for `model.layers.…` and `lm_head.weight`, and these names are looked up
/// under the tower's prefix instead. Other towers' tensors are never read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextTower {
    /// What the Hub's checkpoints and transformers' `save_pretrained` write:
    /// `language_model.model.*` (and `language_model.lm_head.weight` when untied).
    LanguageModel,
    /// transformers v5's module names: `model.language_model.*` (and `lm_head.weight`).
    ModelLanguageModel,
}

impl TextTower {
    /// The stored names that may hold HF text-model tensor `name`, in the order tried.
    fn stored_names(self, name: &str) -> Vec<String> {
        match (self, name.strip_prefix("model.")) {
            (TextTower::LanguageModel, Some(rest)) => vec![format!("language_model.model.{rest}")],
            (TextTower::ModelLanguageModel, Some(rest)) => {
                vec![format!("model.language_model.{rest}")]
            }
            (TextTower::LanguageModel, None) => {
                vec![format!("language_model.{name}"), name.to_string()]
            }
            (TextTower::ModelLanguageModel, None) => vec![name.to_string()],
        }
    }
}

enum Backend {
    Safetensors(MmapedSafetensors),
    Gguf {
        content: gguf_file::Content,
        file: Mutex<File>,
        flavor: GgufFlavor,
    },
}

/// A set of frozen weights addressed by HF tensor names.
pub struct Weights {
    backend: Backend,
    path: PathBuf,
    dtype: DType,
    device: Device,
    quantize: Quantize,
    text_tower: Option<TextTower>,
}

impl Weights {
    /// Memory-maps `model.safetensors` or the shards listed in `model.safetensors.index.json`.
    pub fn from_hf_dir(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let (files, shown) = if single.is_file() {
            (vec![single.clone()], single)
        } else if index.is_file() {
            (shard_files(&index)?, index)
        } else {
            return Err(Error::model(
                dir,
                "no model.safetensors or model.safetensors.index.json",
            ));
        };
        for f in &files {
            if !f.is_file() {
                return Err(Error::model(f, "safetensors shard is missing"));
            }
        }
        // SAFETY: the files are memory-mapped read-only; like every mmap-based loader we
        // assume nobody truncates them while the model is loaded.
        let st = unsafe { MmapedSafetensors::multi(&files) }
            .map_err(|e| Error::model(&shown, format!("not a valid safetensors file: {e}")))?;
        Ok(Self {
            backend: Backend::Safetensors(st),
            path: shown,
            dtype,
            device: device.clone(),
            quantize: Quantize::None,
            text_tower: None,
        })
    }

    /// Wraps an already-parsed GGUF file.
    pub fn from_gguf(
        content: gguf_file::Content,
        file: File,
        path: &Path,
        flavor: GgufFlavor,
        dtype: DType,
        device: &Device,
    ) -> Self {
        Self {
            backend: Backend::Gguf {
                content,
                file: Mutex::new(file),
                flavor,
            },
            path: path.to_path_buf(),
            dtype,
            device: device.clone(),
            quantize: Quantize::None,
            text_tower: None,
        }
    }

    /// Reads the text model's tensors from a multimodal checkpoint's language-model tower,
    /// whichever of the two [`TextTower`] layouts the file uses.
    pub fn with_text_tower(mut self) -> Result<Self> {
        let found = [TextTower::LanguageModel, TextTower::ModelLanguageModel]
            .into_iter()
            .find(|tower| {
                self.text_tower = Some(*tower);
                self.contains("model.embed_tokens.weight")
            });
        self.text_tower = found;
        match found {
            Some(_) => Ok(self),
            None => Err(Error::model(
                &self.path,
                "a multimodal checkpoint without a text tower: neither \
                 `language_model.model.embed_tokens.weight` nor \
                 `model.language_model.embed_tokens.weight` is in it",
            )),
        }
    }

    /// The stored name of HF text-model tensor `name` in a safetensors checkpoint: under the
    /// text tower's prefix when there is one.
    fn stored_name(&self, st: &MmapedSafetensors, name: &str) -> String {
        match self.text_tower {
            None => name.to_string(),
            Some(tower) => {
                let names = tower.stored_names(name);
                names
                    .iter()
                    .find(|n| st.get(n).is_ok())
                    .unwrap_or(&names[0])
                    .clone()
            }
        }
    }

    /// Stores what [`Self::projection`] loads as `quantize` says (embeddings, norms and the
    /// head stay dense).
    pub fn with_quantize(mut self, quantize: Quantize) -> Self {
        self.quantize = quantize;
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Whether a tensor with this HF name exists.
    pub fn contains(&self, name: &str) -> bool {
        match &self.backend {
            Backend::Safetensors(st) => st.get(&self.stored_name(st, name)).is_ok(),
            Backend::Gguf {
                content, flavor, ..
            } => gguf_name(name, *flavor)
                .map(|g| content.tensor_infos.contains_key(&g))
                .unwrap_or(false),
        }
    }

    /// The shape of the tensor with this HF name, as [`Self::get_raw`] would return it, without
    /// reading it; `None` where there is no such tensor.
    pub fn dims(&self, name: &str) -> Option<Vec<usize>> {
        match &self.backend {
            Backend::Safetensors(st) => st
                .get(&self.stored_name(st, name))
                .ok()
                .map(|v| v.shape().to_vec()),
            Backend::Gguf {
                content, flavor, ..
            } => gguf_name(name, *flavor)
                .and_then(|g| content.tensor_infos.get(&g))
                .map(|t| t.shape.dims().to_vec()),
        }
    }

    /// Loads a tensor by HF name, checks its shape, and converts it to the model dtype.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.get_raw(name)?;
        self.check_shape(name, t.dims(), shape)?;
        Ok(t.to_dtype(self.dtype)?)
    }

    /// A dense frozen [`Linear`] from `{prefix}.weight` (`[out, inp]`) and optionally
    /// `{prefix}.bias`, whatever [`Self::with_quantize`] says (the head stays dense).
    pub fn linear(&self, prefix: &str, out: usize, inp: usize, bias: bool) -> Result<Linear> {
        let weight = FrozenWeight::dense(self.get(&format!("{prefix}.weight"), &[out, inp])?)?;
        self.with_bias(weight, prefix, out, bias)
    }

    /// A decoder projection: [`Self::linear`], with the weight stored as
    /// [`Self::with_quantize`] says.
    pub fn projection(&self, prefix: &str, out: usize, inp: usize, bias: bool) -> Result<Linear> {
        let name = format!("{prefix}.weight");
        let weight = match self.quantize {
            Quantize::None => FrozenWeight::dense(self.get(&name, &[out, inp])?)?,
            Quantize::Gguf => self.gguf_blocks(&name, &[out, inp])?,
            q => {
                let w = self.get_raw(&name)?;
                self.check_shape(&name, w.dims(), &[out, inp])?;
                FrozenWeight::Quant(Arc::new(QuantWeight::quantize(&name, &w, q, self.dtype)?))
            }
        };
        self.with_bias(weight, prefix, out, bias)
    }

    /// `weight` with `{prefix}.bias` when `bias` is set.
    fn with_bias(
        &self,
        weight: FrozenWeight,
        prefix: &str,
        out: usize,
        bias: bool,
    ) -> Result<Linear> {
        let bias = if bias {
            Some(self.get(&format!("{prefix}.bias"), &[out])?)
        } else {
            None
        };
        Ok(Linear::from_frozen(weight, bias))
    }

    /// The GGUF tensor for HF name `name`, read onto `device` as stored, with the file's flavor.
    fn gguf_tensor(&self, name: &str, device: &Device) -> Result<(QTensor, GgufFlavor)> {
        let Backend::Gguf {
            content,
            file,
            flavor,
        } = &self.backend
        else {
            return Err(Error::model(
                &self.path,
                format!("`{name}`: quantize = \"gguf\" needs a GGUF model file"),
            ));
        };
        let gname = gguf_name(name, *flavor).ok_or_else(|| {
            Error::model(
                &self.path,
                format!("no GGUF tensor corresponds to `{name}`"),
            )
        })?;
        if !content.tensor_infos.contains_key(&gname) {
            return Err(Error::model(
                &self.path,
                format!("tensor `{gname}` (HF `{name}`) is missing"),
            ));
        }
        let mut f = file
            .lock()
            .map_err(|_| Error::model(&self.path, "file lock poisoned"))?;
        let q = content.tensor(&mut *f, &gname, device).map_err(|e| {
            Error::model(&self.path, format!("tensor `{gname}` cannot be read: {e}"))
        })?;
        Ok((q, *flavor))
    }

    /// A GGUF tensor kept in its file's blocks (rows moved to HF order), or dense when the
    /// file stores it unquantized.
    fn gguf_blocks(&self, name: &str, shape: &[usize]) -> Result<FrozenWeight> {
        // Read on the CPU: the rows are regrouped into blocks before they go to the device.
        let (q, flavor) = self.gguf_tensor(name, &Device::Cpu)?;
        self.check_shape(name, q.shape().dims(), shape)?;
        if matches!(q.dtype(), GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16) {
            return FrozenWeight::dense(self.get(name, shape)?);
        }
        let heads = match flavor {
            GgufFlavor::Llama { n_head, .. } if name.ends_with("self_attn.q_proj.weight") => {
                Some(n_head)
            }
            GgufFlavor::Llama { n_kv_head, .. } if name.ends_with("self_attn.k_proj.weight") => {
                Some(n_kv_head)
            }
            _ => None,
        };
        let order = heads
            .map(|h| unpermute_row_order(shape[0], h))
            .transpose()?;
        let w = QuantWeight::from_qtensor(&q, order.as_deref(), self.dtype, &self.device)
            .map_err(|e| Error::model(&self.path, format!("tensor `{name}`: {e}")))?;
        Ok(FrozenWeight::Quant(Arc::new(w)))
    }

    fn check_shape(&self, name: &str, dims: &[usize], shape: &[usize]) -> Result<()> {
        if dims != shape {
            return Err(Error::model(
                &self.path,
                format!("tensor `{name}` has shape {dims:?}, the config implies {shape:?}"),
            ));
        }
        Ok(())
    }

    /// Loads a tensor by HF name in f32 (or its stored dtype for safetensors), unchecked.
    pub fn get_raw(&self, name: &str) -> Result<Tensor> {
        match &self.backend {
            Backend::Safetensors(st) => {
                let stored = self.stored_name(st, name);
                let view = st.get(&stored).map_err(|_| {
                    Error::model(&self.path, format!("tensor `{stored}` is missing"))
                })?;
                let t = candle_core::safetensors::Load::load(&view, &self.device).map_err(|e| {
                    Error::model(&self.path, format!("tensor `{name}` cannot be read: {e}"))
                })?;
                Ok(t)
            }
            Backend::Gguf { .. } => {
                let (q, flavor) = self.gguf_tensor(name, &self.device)?;
                to_hf_layout(name, q.dequantize(&self.device)?, flavor)
            }
        }
    }
}

fn shard_files(index: &Path) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::model(index, format!("not valid JSON: {e}")))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::model(index, "missing `weight_map`"))?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut files: Vec<String> = map
        .values()
        .filter_map(|f| f.as_str().map(str::to_string))
        .collect();
    files.sort();
    files.dedup();
    Ok(files.into_iter().map(|f| dir.join(f)).collect())
}

/// The GGUF tensor name for an HF tensor name.
pub fn gguf_name(hf: &str, flavor: GgufFlavor) -> Option<String> {
    let fixed: HashMap<&str, &str> = [
        ("model.embed_tokens.weight", "token_embd.weight"),
        ("model.norm.weight", "output_norm.weight"),
        ("lm_head.weight", "output.weight"),
        ("rope_freqs.weight", "rope_freqs.weight"),
    ]
    .into_iter()
    .collect();
    if let Some(g) = fixed.get(hf) {
        return Some(g.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, module) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, suffix) = module.rsplit_once('.')?;
    let g = match (module, flavor) {
        ("self_attn.q_proj", _) => "attn_q",
        ("self_attn.k_proj", _) => "attn_k",
        ("self_attn.v_proj", _) => "attn_v",
        ("self_attn.o_proj", _) => "attn_output",
        ("self_attn.q_norm", _) => "attn_q_norm",
        ("self_attn.k_norm", _) => "attn_k_norm",
        ("mlp.gate_proj", _) => "ffn_gate",
        ("mlp.up_proj", _) => "ffn_up",
        ("mlp.down_proj", _) => "ffn_down",
        ("input_layernorm", _) => "attn_norm",
        ("post_attention_layernorm", GgufFlavor::Llama { .. } | GgufFlavor::Qwen) => "ffn_norm",
        ("post_attention_layernorm", GgufFlavor::Gemma) => "post_attention_norm",
        ("pre_feedforward_layernorm", GgufFlavor::Gemma) => "ffn_norm",
        ("post_feedforward_layernorm", GgufFlavor::Gemma) => "post_ffw_norm",
        _ => return None,
    };
    Some(format!("blk.{layer}.{g}.{suffix}"))
}

/// Undoes llama.cpp's conversions so the tensor is in HF layout.
fn to_hf_layout(hf: &str, t: Tensor, flavor: GgufFlavor) -> Result<Tensor> {
    match flavor {
        GgufFlavor::Llama { n_head, n_kv_head } => {
            if hf.ends_with("self_attn.q_proj.weight") || hf.ends_with("self_attn.q_proj.bias") {
                unpermute_rope_rows(&t, n_head)
            } else if hf.ends_with("self_attn.k_proj.weight")
                || hf.ends_with("self_attn.k_proj.bias")
            {
                unpermute_rope_rows(&t, n_kv_head)
            } else {
                Ok(t)
            }
        }
        GgufFlavor::Qwen => Ok(t),
        GgufFlavor::Gemma => {
            if hf.ends_with("norm.weight") {
                Ok((t - 1.0)?)
            } else {
                Ok(t)
            }
        }
    }
}

/// Inverse of llama.cpp's `permute`: rows `[h, d/2, 2]` back to `[h, 2, d/2]`.
pub fn unpermute_rope_rows(t: &Tensor, n_head: usize) -> Result<Tensor> {
    let dims = t.dims().to_vec();
    let out = dims[0];
    if n_head == 0 || !out.is_multiple_of(n_head * 2) {
        return Err(Error::shape(
            "the rope permutation",
            format!("a multiple of 2 x {n_head} heads"),
            format!("{out} rows"),
        ));
    }
    let head_dim = out / n_head;
    let rest: usize = dims[1..].iter().product();
    let r = t
        .reshape((n_head, head_dim / 2, 2, rest))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(dims)?;
    Ok(r)
}

/// `order[i]`: the llama.cpp row that holds HF row `i` of a q/k projection with `n_head`
/// heads (the row form of [`unpermute_rope_rows`]).
pub fn unpermute_row_order(rows: usize, n_head: usize) -> Result<Vec<usize>> {
    if n_head == 0 || !rows.is_multiple_of(n_head * 2) {
        return Err(Error::shape(
            "the rope permutation",
            format!("a multiple of 2 x {n_head} heads"),
            format!("{rows} rows"),
        ));
    }
    let hd = rows / n_head;
    let mut order = Vec::with_capacity(rows);
    for h in 0..n_head {
        for j in 0..2 {
            for i in 0..hd / 2 {
                order.push(h * hd + 2 * i + j);
            }
        }
    }
    Ok(order)
}

/// Reads a GGUF file's header and tensor directory; errors name the file.
pub fn read_gguf(path: &Path) -> Result<(gguf_file::Content, File)> {
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    // candle-core 0.11.1 divides by `general.alignment` unchecked (`Content::read`): a 0 there
    // panics, caught here with anything else its reader does not check.
    let content = crate::error::catch_panic(|| gguf_file::Content::read(&mut file))
        .map_err(|why| {
            Error::model(
                path,
                format!(
                    "not a valid GGUF file: its header breaks the GGUF reader ({why}); \
                     a `general.alignment` of 0 does this"
                ),
            )
        })?
        .map_err(|e| Error::model(path, format!("not a valid GGUF file: {e}")))?;
    // A truncated file has a valid header but tensor data past its end.
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    for (name, info) in &content.tensor_infos {
        let bytes = info
            .shape
            .dims()
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(d as u64))
            .map(|elems| elems / info.ggml_dtype.block_size() as u64)
            .and_then(|blocks| blocks.checked_mul(info.ggml_dtype.type_size() as u64));
        let end = bytes.and_then(|b| {
            content
                .tensor_data_offset
                .checked_add(info.offset)?
                .checked_add(b)
        });
        match end {
            None => {
                return Err(Error::model(
                    path,
                    format!(
                        "tensor `{name}` has a size or offset that overflows ({:?})",
                        info.shape
                    ),
                ))
            }
            Some(end) if end > len => {
                return Err(Error::model(
                    path,
                    format!("truncated: tensor `{name}` runs past the end of the file"),
                ))
            }
            Some(_) => {}
        }
    }
    Ok((content, file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // llama.cpp: w.reshape(h, 2, d/2, in).swapaxes(1, 2).reshape(out, in)
        let (h, d, inp) = (2usize, 4usize, 3usize);
        let hf = Tensor::arange(0f32, (h * d * inp) as f32, &Device::Cpu)
            .unwrap()
            .reshape((h * d, inp))
            .unwrap();
        let permuted = hf
            .reshape((h, 2, d / 2, inp))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
            .reshape((h * d, inp))
            .unwrap();
        let back = unpermute_rope_rows(&permuted, h).unwrap();
        let diff = (back - &hf).unwrap().abs().unwrap().sum_all().unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
    }

    #[test]
    fn row_order_moves_rows_like_unpermute() {
        let (h, d, inp) = (3usize, 8usize, 2usize);
        let t = Tensor::arange(0f32, (h * d * inp) as f32, &Device::Cpu)
            .unwrap()
            .reshape((h * d, inp))
            .unwrap();
        let by_tensor = unpermute_rope_rows(&t, h).unwrap();
        let order: Vec<u32> = unpermute_row_order(h * d, h)
            .unwrap()
            .into_iter()
            .map(|r| r as u32)
            .collect();
        let idx = Tensor::new(order.as_slice(), &Device::Cpu).unwrap();
        let by_rows = t.index_select(&idx, 0).unwrap();
        let diff = (by_rows - by_tensor)
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
        assert!(unpermute_row_order(10, 3).is_err());
    }

    #[test]
    fn gguf_names() {
        let l = GgufFlavor::Llama {
            n_head: 9,
            n_kv_head: 3,
        };
        assert_eq!(
            gguf_name("model.layers.3.post_attention_layernorm.weight", l).as_deref(),
            Some("blk.3.ffn_norm.weight")
        );
        assert_eq!(
            gguf_name(
                "model.layers.3.pre_feedforward_layernorm.weight",
                GgufFlavor::Gemma
            )
            .as_deref(),
            Some("blk.3.ffn_norm.weight")
        );
    }
}
