//! Import and export of Hugging Face checkpoints.
//!
//! A Hugging Face model directory holds `config.json` and `model.safetensors` (or the older
//! pickle `pytorch_model.bin`). [`load_pretrained`] reads one into any architecture of this crate;
//! [`save_pretrained`] writes the same layout back, so transformers' `from_pretrained` loads it
//! with no missing keys.
//!
//! # Key renames
//! Module paths mirror HF names; these are the only differences, used by import and export
//! alike ([`hf_to_ours`], [`ours_to_hf`]):
//!
//! | Hugging Face                       | here                              | why |
//! |------------------------------------|-----------------------------------|-----|
//! | `…attention.self.…`                | `…attention.self_attn.…`          | `self` is a Rust keyword |
//! | `…LayerNorm.weight` / `.gamma`     | `…layer_norm.gamma`               | snake case; Burn's LayerNorm names |
//! | `…LayerNorm.bias` / `.beta`        | `…layer_norm.beta`                | idem |
//! | `Linear` weights `[out, in]`       | `[in, out]`                       | Burn's layout (transposed by burn-store's PyTorch adapters) |
//! | `cls.predictions.decoder.weight`   | (not stored)                      | tied to `embeddings.word_embeddings.weight` |
//! | `cls.predictions.decoder.bias`     | `cls.predictions.bias`            | the same tensor in HF |
//! | `embeddings.position_ids`          | (skipped)                         | a buffer, not a parameter |
//!
//! Task models keep the encoder under `bert.`; the bare [`BertModel`] has no prefix. Files with
//! or without the prefix load into either.
//!
//! Loading is strict by default: a missing, unexpected or mis-shaped tensor is an error naming
//! it. [`LoadOptions::partial`] allows missing and unexpected tensors (e.g. a pretrained encoder
//! into a classifier whose head is new); the report lists them. Pickle files are read by
//! burn-store's own unpickler, which reconstructs tensors and never executes code from the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use burn::module::{Module, ParamId};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, TensorData};
use burn_store::{
    ApplyError, BurnToPyTorchAdapter, ModuleSnapshot, ModuleStore, PyTorchToBurnAdapter,
    PytorchStore, SafetensorsStore, TensorSnapshot,
};

use crate::architecture::Architecture;
use crate::config::BertConfig;
use crate::error::BertError;
use crate::heads::{
    BertForMaskedLM, BertForMultipleChoice, BertForPreTraining, BertForQuestionAnswering,
    BertForSequenceClassification, BertForTokenClassification,
};
use crate::model::BertModel;

/// Path segments renamed between HF and this crate: `(hf, ours)`.
pub const SEGMENT_RENAMES: &[(&str, &str)] = &[("self", "self_attn"), ("LayerNorm", "layer_norm")];

/// LayerNorm parameter names: `(hf, ours)`; legacy TF-converted names first map to these.
pub const LAYER_NORM_PARAMS: &[(&str, &str)] = &[("weight", "gamma"), ("bias", "beta")];

/// Maps an HF key to this crate's module path (segments and LayerNorm parameter names).
pub fn hf_to_ours(key: &str) -> String {
    let segments: Vec<&str> = key.split('.').collect();
    let last = segments.len().saturating_sub(1);
    let in_norm = last > 0 && segments[last - 1] == "LayerNorm";
    segments
        .iter()
        .enumerate()
        .map(|(i, s)| {
            if i == last && in_norm {
                let name = match *s {
                    "gamma" => "weight",
                    "beta" => "bias",
                    other => other,
                };
                return LAYER_NORM_PARAMS
                    .iter()
                    .find(|(hf, _)| *hf == name)
                    .map_or(name, |(_, ours)| ours)
                    .to_string();
            }
            SEGMENT_RENAMES
                .iter()
                .find(|(hf, _)| hf == s)
                .map_or(*s, |(_, ours)| ours)
                .to_string()
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// Maps a module path of this crate to its HF key (the inverse of [`hf_to_ours`]).
pub fn ours_to_hf(path: &str) -> String {
    let segments: Vec<&str> = path.split('.').collect();
    let last = segments.len().saturating_sub(1);
    let in_norm = last > 0 && segments[last - 1] == "layer_norm";
    segments
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let table: &[(&str, &str)] = if i == last && in_norm {
                LAYER_NORM_PARAMS
            } else {
                SEGMENT_RENAMES
            };
            table
                .iter()
                .find(|(_, ours)| ours == s)
                .map_or(*s, |(hf, _)| hf)
                .to_string()
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// How strictly a checkpoint must match the model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Keep the initialisation of parameters the checkpoint lacks (e.g. a new head).
    pub allow_missing: bool,
    /// Ignore checkpoint tensors the model has no place for (e.g. another task's head).
    pub allow_unexpected: bool,
}

impl LoadOptions {
    /// Every tensor must match: the default.
    pub fn strict() -> Self {
        Self::default()
    }

    /// Missing and unexpected tensors are reported, not errors.
    pub fn partial() -> Self {
        Self {
            allow_missing: true,
            allow_unexpected: true,
        }
    }
}

/// What a load did, with HF names.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// Number of parameters tensors loaded.
    pub loaded: usize,
    /// Model parameters the checkpoint did not have (left as initialised).
    pub missing: Vec<String>,
    /// Checkpoint tensors the model had no place for.
    pub unexpected: Vec<String>,
    /// Checkpoint entries skipped by design (buffers, tied weights, other heads).
    pub ignored: Vec<String>,
}

/// An architecture that can be built from a [`BertConfig`] and loaded from an HF checkpoint.
pub trait PretrainedBert<B: Backend>: Module<B> + Sized {
    /// The HF class, whose name is written to `architectures`.
    const ARCHITECTURE: Architecture;
    /// Whether the encoder sits under `bert.` (every task model) or at the root (`BertModel`).
    const PREFIXED: bool = true;
    /// Whether transformers builds this class with a pooler.
    const POOLER: bool;
    /// Whether a checkpoint of this class may come without the pooler (transformers'
    /// `add_pooling_layer=False`): the model is then built without one.
    const OPTIONAL_POOLER: bool;

    /// A randomly initialised model; `with_pooler` overrides [`Self::POOLER`] when a checkpoint
    /// carries (or lacks) pooler weights that the class may do without.
    fn init(config: &BertConfig, with_pooler: bool, device: &B::Device) -> Self;

    /// Checkpoint keys (HF names, with the `bert.` prefix) that this class drops on load,
    /// as transformers' `_keys_to_ignore_on_load_unexpected`.
    fn ignores_on_load(key: &str) -> bool {
        let _ = key;
        false
    }
}

fn is_head_key(key: &str) -> bool {
    ["cls.", "classifier.", "qa_outputs."]
        .iter()
        .any(|p| key.starts_with(p))
}

macro_rules! pretrained {
    ($ty:ident, $arch:ident, pooler = $pooler:literal, optional_pooler = $optional:literal, ignore = $ignore:expr) => {
        impl<B: Backend> PretrainedBert<B> for $ty<B> {
            const ARCHITECTURE: Architecture = Architecture::$arch;
            const POOLER: bool = $pooler;
            const OPTIONAL_POOLER: bool = $optional;
            fn init(config: &BertConfig, with_pooler: bool, device: &B::Device) -> Self {
                let mut model = Self::new(config, device);
                if $optional && with_pooler != model.bert.pooler.is_some() {
                    model.bert.pooler =
                        with_pooler.then(|| crate::model::BertPooler::new(config, device));
                }
                model
            }
            fn ignores_on_load(key: &str) -> bool {
                let ignore: fn(&str) -> bool = $ignore;
                ignore(key)
            }
        }
    };
}

impl<B: Backend> PretrainedBert<B> for BertModel<B> {
    const ARCHITECTURE: Architecture = Architecture::Base;
    const PREFIXED: bool = false;
    const POOLER: bool = true;
    // Sentence-transformers exports and ONNX conversions often drop it.
    const OPTIONAL_POOLER: bool = true;
    fn init(config: &BertConfig, with_pooler: bool, device: &B::Device) -> Self {
        BertModel::new(config, with_pooler, device)
    }
    fn ignores_on_load(key: &str) -> bool {
        // The bare encoder drops every head, as `AutoModel.from_pretrained` does.
        is_head_key(key)
    }
}

pretrained!(
    BertForPreTraining,
    PreTraining,
    pooler = true,
    optional_pooler = false,
    ignore = |_| false
);
pretrained!(
    BertForMaskedLM,
    MaskedLm,
    pooler = false,
    optional_pooler = true,
    ignore = |k| k.starts_with("cls.seq_relationship.")
);
pretrained!(
    BertForSequenceClassification,
    SequenceClassification,
    pooler = true,
    optional_pooler = false,
    ignore = |_| false
);
pretrained!(
    BertForTokenClassification,
    TokenClassification,
    pooler = false,
    optional_pooler = true,
    ignore = |_| false
);
pretrained!(
    BertForQuestionAnswering,
    QuestionAnswering,
    pooler = false,
    optional_pooler = true,
    ignore = |_| false
);
pretrained!(
    BertForMultipleChoice,
    MultipleChoice,
    pooler = true,
    optional_pooler = false,
    ignore = |_| false
);

/// The weights file of an HF model directory: `model.safetensors`, else `pytorch_model.bin`.
pub fn weights_file(dir: &Path) -> Result<PathBuf, BertError> {
    if !dir.is_dir() {
        return Err(BertError::MissingFile(format!(
            "model directory {} does not exist",
            dir.display()
        )));
    }
    for name in ["model.safetensors", "pytorch_model.bin"] {
        let path = dir.join(name);
        if path.is_file() {
            return Ok(path);
        }
    }
    Err(BertError::MissingFile(format!(
        "{} has neither model.safetensors nor pytorch_model.bin",
        dir.display()
    )))
}

/// Reads every tensor of a checkpoint file, keyed by its name in the file.
pub fn read_checkpoint(path: &Path) -> Result<BTreeMap<String, TensorSnapshot>, BertError> {
    let fail = |message: String| BertError::InFile {
        path: path.to_path_buf(),
        message,
    };
    if !path.is_file() {
        return Err(BertError::MissingFile(format!(
            "checkpoint {} does not exist",
            path.display()
        )));
    }
    let is_safetensors = path.extension().is_some_and(|e| e == "safetensors");
    if is_safetensors {
        let mut store = SafetensorsStore::from_file(path);
        store
            .get_all_snapshots()
            .cloned()
            .map_err(|e| fail(format!("not a readable safetensors file: {e}")))
    } else {
        let mut store = PytorchStore::from_file(path);
        store
            .get_all_snapshots()
            .cloned()
            .map_err(|e| fail(format!("not a readable PyTorch checkpoint: {e}")))
    }
}

fn renamed(snapshot: &TensorSnapshot, path: &str) -> TensorSnapshot {
    let source = snapshot.clone_data_fn();
    let dtype = snapshot.dtype;
    // Every float checkpoint is loaded as f32, whatever its stored precision.
    let (data_fn, dtype): (Rc<dyn Fn() -> _>, DType) = if dtype.is_float() && dtype != DType::F32 {
        (
            Rc::new(move || source().map(|d: TensorData| d.convert_dtype(DType::F32))),
            DType::F32,
        )
    } else {
        (source, dtype)
    };
    TensorSnapshot::from_closure(
        data_fn,
        dtype,
        snapshot.shape.clone(),
        path.split('.').map(str::to_string).collect(),
        Vec::new(),
        ParamId::new(),
    )
}

/// Normalises a file key to the HF key of architecture `M` (adding or removing `bert.`).
/// `None` means the key is dropped by design.
fn key_for<B: Backend, M: PretrainedBert<B>>(key: &str, prefixed_file: bool) -> Option<String> {
    if key.ends_with("position_ids") || key == "cls.predictions.decoder.weight" {
        return None;
    }
    let base = if prefixed_file {
        key.strip_prefix("bert.")
    } else {
        (!is_head_key(key)).then_some(key)
    };
    let key = match (base, M::PREFIXED) {
        (Some(base), true) => format!("bert.{base}"),
        (Some(base), false) => base.to_string(),
        (None, _) => key.to_string(),
    };
    (!M::ignores_on_load(&key)).then_some(key)
}

/// Loads a checkpoint file into a model built by the caller.
pub fn load_weights<B: Backend, M: PretrainedBert<B>>(
    mut model: M,
    path: &Path,
    options: LoadOptions,
) -> Result<(M, LoadReport), BertError> {
    let tensors = read_checkpoint(path)?;
    let report = apply_checkpoint::<B, M>(&mut model, &tensors, path, options)?;
    Ok((model, report))
}

/// A shape as HF stores it: Linear weights are `[out, in]` there.
fn hf_shape(ours: &str, shape: &burn::tensor::Shape) -> Vec<usize> {
    let mut dims = shape.to_vec();
    let is_linear_weight = ours.ends_with(".weight") && !ours.contains("embeddings.");
    if is_linear_weight && dims.len() == 2 {
        dims.reverse();
    }
    dims
}

fn apply_checkpoint<B: Backend, M: PretrainedBert<B>>(
    model: &mut M,
    tensors: &BTreeMap<String, TensorSnapshot>,
    path: &Path,
    options: LoadOptions,
) -> Result<LoadReport, BertError> {
    let prefixed_file = tensors.keys().any(|k| k.starts_with("bert."));
    let mut report = LoadReport::default();
    let has_bias = tensors.contains_key("cls.predictions.bias");
    let mut snapshots = Vec::new();
    let mut hf_of_ours = BTreeMap::new();
    for (key, snapshot) in tensors {
        let key = if key == "cls.predictions.decoder.bias" {
            if has_bias {
                report.ignored.push(key.clone());
                continue;
            }
            "cls.predictions.bias".to_string()
        } else {
            key.clone()
        };
        let Some(hf) = key_for::<B, M>(&key, prefixed_file) else {
            report.ignored.push(key);
            continue;
        };
        let ours = hf_to_ours(&hf);
        snapshots.push(renamed(snapshot, &ours));
        hf_of_ours.insert(ours, hf);
    }
    let result = model.apply(snapshots, None, Some(Box::new(PyTorchToBurnAdapter)), false);
    let hf = |ours: &String| {
        hf_of_ours
            .get(ours)
            .cloned()
            .unwrap_or_else(|| ours_to_hf(ours))
    };
    report.loaded = result.applied.len();
    report.missing = result.missing.iter().map(|(p, _)| ours_to_hf(p)).collect();
    report.unexpected = result.unused.iter().map(hf).collect();
    let mut problems: Vec<String> = result
        .errors
        .iter()
        .map(|error| match error {
            ApplyError::ShapeMismatch {
                path,
                expected,
                found,
            } => format!(
                "tensor {} has shape {:?} in the checkpoint but the model expects {:?}",
                hf(path),
                hf_shape(path, found),
                hf_shape(path, expected)
            ),
            other => other.to_string(),
        })
        .collect();
    if !options.allow_missing && !report.missing.is_empty() {
        problems.push(format!("missing tensors: {}", report.missing.join(", ")));
    }
    if !options.allow_unexpected && !report.unexpected.is_empty() {
        problems.push(format!(
            "unexpected tensors: {}",
            report.unexpected.join(", ")
        ));
    }
    if problems.is_empty() {
        Ok(report)
    } else {
        Err(BertError::Checkpoint {
            path: path.to_path_buf(),
            message: problems.join("; "),
        })
    }
}

/// Loads `config.json` and the weights of an HF model directory into architecture `M`.
///
/// The pooler is built when the checkpoint has one (or when `M` requires it).
pub fn load_pretrained<B: Backend, M: PretrainedBert<B>>(
    dir: impl AsRef<Path>,
    options: LoadOptions,
    device: &B::Device,
) -> Result<(M, BertConfig, LoadReport), BertError> {
    let dir = dir.as_ref();
    let weights = weights_file(dir)?;
    let config = load_config(dir)?;
    let tensors = read_checkpoint(&weights)?;
    let has_pooler = tensors
        .keys()
        .any(|k| k == "pooler.dense.weight" || k == "bert.pooler.dense.weight");
    let pooler = has_pooler || (M::POOLER && !M::OPTIONAL_POOLER);
    let mut model = M::init(&config, pooler, device);
    let report = apply_checkpoint::<B, M>(&mut model, &tensors, &weights, options)?;
    Ok((model, config, report))
}

/// Reads `config.json` of an HF model directory.
pub fn load_config(dir: impl AsRef<Path>) -> Result<BertConfig, BertError> {
    let path = dir.as_ref().join("config.json");
    if !path.is_file() {
        return Err(BertError::MissingFile(format!(
            "{} has no config.json",
            dir.as_ref().display()
        )));
    }
    BertConfig::from_json_file(&path)
}

fn safetensors_dtype(dtype: DType) -> Result<safetensors::Dtype, BertError> {
    Ok(match dtype {
        DType::F64 => safetensors::Dtype::F64,
        DType::F32 | DType::Flex32 => safetensors::Dtype::F32,
        DType::F16 => safetensors::Dtype::F16,
        DType::BF16 => safetensors::Dtype::BF16,
        DType::I64 => safetensors::Dtype::I64,
        DType::I32 => safetensors::Dtype::I32,
        DType::I16 => safetensors::Dtype::I16,
        DType::I8 => safetensors::Dtype::I8,
        DType::U8 => safetensors::Dtype::U8,
        DType::Bool(_) => safetensors::Dtype::BOOL,
        other => {
            return Err(BertError::Config(format!(
                "cannot store a {other:?} tensor in safetensors"
            )));
        }
    })
}

/// The tensors of a model under their HF names, as host data.
pub fn hf_state_dict<B: Backend, M: PretrainedBert<B>>(
    model: &M,
) -> Result<Vec<(String, TensorData)>, BertError> {
    let snapshots = model.collect(None, Some(Box::new(BurnToPyTorchAdapter)), false);
    snapshots
        .iter()
        .map(|s| {
            let key = ours_to_hf(&s.full_path());
            let data = s
                .to_data()
                .map_err(|e| BertError::Config(format!("cannot read tensor {key}: {e:?}")))?;
            Ok((key, data))
        })
        .collect()
}

/// Writes tensors to a safetensors file atomically (temporary file, then rename), with the
/// `format: pt` metadata that transformers expects.
pub fn write_safetensors(path: &Path, tensors: &[(String, TensorData)]) -> Result<(), BertError> {
    let views = tensors
        .iter()
        .map(|(name, data)| {
            let view = safetensors::tensor::TensorView::new(
                safetensors_dtype(data.dtype)?,
                data.shape.to_vec(),
                data.as_bytes(),
            )
            .map_err(|e| BertError::Config(format!("tensor {name}: {e}")))?;
            Ok((name.clone(), view))
        })
        .collect::<Result<Vec<_>, BertError>>()?;
    let metadata = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    let bytes = safetensors::serialize(views, Some(metadata))
        .map_err(|e| BertError::Config(format!("cannot serialise safetensors: {e}")))?;
    write_atomically(path, &bytes)
}

/// Writes a file through a temporary sibling and a rename, so a reader never sees half a file.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), BertError> {
    let tmp = path.with_extension(format!(
        "{}.tmp{}",
        path.extension().and_then(|e| e.to_str()).unwrap_or(""),
        std::process::id()
    ));
    std::fs::write(&tmp, bytes).map_err(|e| BertError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| BertError::io(path, e))
}

/// Writes `config.json` (with `architectures` set to `M`) and `model.safetensors` with HF
/// names into `dir`, creating it. Tokenizer files are the caller's (the data crate's) to add.
pub fn save_pretrained<B: Backend, M: PretrainedBert<B>>(
    model: &M,
    config: &BertConfig,
    dir: impl AsRef<Path>,
) -> Result<(), BertError> {
    let dir = dir.as_ref();
    std::fs::create_dir_all(dir).map_err(|e| BertError::io(dir, e))?;
    let mut config = config.clone();
    config.architectures = vec![M::ARCHITECTURE.name().to_string()];
    let tensors = hf_state_dict::<B, M>(model)?;
    write_safetensors(&dir.join("model.safetensors"), &tensors)?;
    write_atomically(&dir.join("config.json"), config.to_json_string().as_bytes())
}

#[cfg(test)]
#[path = "checkpoint_tests.rs"]
mod tests;
