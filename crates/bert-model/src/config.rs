//! [`BertConfig`]: the Hugging Face `config.json` of a BERT model.
//!
//! Serde names are the Hugging Face keys, so an HF `config.json` deserialises directly
//! (unknown keys are ignored, as transformers does) and a config we write loads in transformers.
//! The same struct reads from TOML, where unknown keys are an error (a typo in a hand-written
//! file must not be silently ignored).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::BertError;

/// Activation of the feed-forward block and of the MLM transform (`hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum HiddenAct {
    /// Exact GELU, `x·Φ(x)` with erf (`"gelu"`, BERT's original).
    #[default]
    #[serde(rename = "gelu")]
    Gelu,
    /// The tanh approximation of GELU (`"gelu_new"`, `"gelu_pytorch_tanh"`, `"gelu_fast"`).
    #[serde(
        rename = "gelu_new",
        alias = "gelu_pytorch_tanh",
        alias = "gelu_fast",
        alias = "gelu_tanh"
    )]
    GeluTanh,
    /// `max(0, x)`.
    #[serde(rename = "relu")]
    Relu,
    /// `x·sigmoid(x)` (`"silu"`, `"swish"`).
    #[serde(rename = "silu", alias = "swish")]
    Silu,
}

/// Hyper-parameters of a BERT model, named as in Hugging Face `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BertConfig {
    /// Size of the WordPiece vocabulary.
    #[serde(default = "defaults::vocab_size")]
    pub vocab_size: usize,
    /// Width of every hidden state (H).
    #[serde(default = "defaults::hidden_size")]
    pub hidden_size: usize,
    /// Number of encoder layers (L).
    #[serde(default = "defaults::num_hidden_layers")]
    pub num_hidden_layers: usize,
    /// Number of attention heads; must divide `hidden_size`.
    #[serde(default = "defaults::num_attention_heads")]
    pub num_attention_heads: usize,
    /// Width of the feed-forward block.
    #[serde(default = "defaults::intermediate_size")]
    pub intermediate_size: usize,
    /// Activation of the feed-forward block.
    #[serde(default)]
    pub hidden_act: HiddenAct,
    /// Dropout on embeddings and residual branches.
    #[serde(default = "defaults::dropout")]
    pub hidden_dropout_prob: f64,
    /// Dropout on attention probabilities.
    #[serde(default = "defaults::dropout")]
    pub attention_probs_dropout_prob: f64,
    /// Number of learned absolute positions (the longest input).
    #[serde(default = "defaults::max_position_embeddings")]
    pub max_position_embeddings: usize,
    /// Number of segment (token type) ids.
    #[serde(default = "defaults::type_vocab_size")]
    pub type_vocab_size: usize,
    /// Standard deviation of the normal weight initialiser.
    #[serde(default = "defaults::initializer_range")]
    pub initializer_range: f64,
    /// LayerNorm epsilon.
    #[serde(default = "defaults::layer_norm_eps")]
    pub layer_norm_eps: f64,
    /// Id of the padding token (its word embedding row is initialised to zero).
    #[serde(default)]
    pub pad_token_id: usize,
    /// Only `"absolute"` is supported; anything else is rejected by [`BertConfig::validate`].
    #[serde(default = "defaults::position_embedding_type")]
    pub position_embedding_type: String,
    /// Dropout before a classification head; `None` falls back to `hidden_dropout_prob`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classifier_dropout: Option<f64>,
    /// Number of labels of a classification head (`1` means regression for sequence
    /// classification). Derived from `id2label` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_labels: Option<usize>,
    /// Label names by id, as in HF (`{"0": "negative", "1": "positive"}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id2label: Option<BTreeMap<String, String>>,
    /// Label ids by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label2id: Option<BTreeMap<String, usize>>,
    /// HF architecture names (`["BertForMaskedLM"]`); decides which head a checkpoint carries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub architectures: Vec<String>,
    /// Whether the MLM decoder shares the word embedding matrix (always true for BERT).
    #[serde(default = "defaults::yes")]
    pub tie_word_embeddings: bool,
    /// `"bert"`; kept so that transformers' `AutoConfig` recognises the file.
    #[serde(default = "defaults::model_type")]
    pub model_type: String,
    /// Problem type of a sequence-classification head (`"regression"`,
    /// `"single_label_classification"`, `"multi_label_classification"`), as in HF.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem_type: Option<String>,
}

mod defaults {
    pub fn vocab_size() -> usize {
        30522
    }
    pub fn hidden_size() -> usize {
        768
    }
    pub fn num_hidden_layers() -> usize {
        12
    }
    pub fn num_attention_heads() -> usize {
        12
    }
    pub fn intermediate_size() -> usize {
        3072
    }
    pub fn dropout() -> f64 {
        0.1
    }
    pub fn max_position_embeddings() -> usize {
        512
    }
    pub fn type_vocab_size() -> usize {
        2
    }
    pub fn initializer_range() -> f64 {
        0.02
    }
    pub fn layer_norm_eps() -> f64 {
        1e-12
    }
    pub fn position_embedding_type() -> String {
        "absolute".into()
    }
    pub fn yes() -> bool {
        true
    }
    pub fn model_type() -> String {
        "bert".into()
    }
}

impl Default for BertConfig {
    fn default() -> Self {
        Self::base()
    }
}

impl burn::config::Config for BertConfig {}

impl BertConfig {
    fn sized(layers: usize, hidden: usize, heads: usize) -> Self {
        Self {
            vocab_size: defaults::vocab_size(),
            hidden_size: hidden,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            intermediate_size: 4 * hidden,
            hidden_act: HiddenAct::Gelu,
            hidden_dropout_prob: 0.1,
            attention_probs_dropout_prob: 0.1,
            max_position_embeddings: 512,
            type_vocab_size: 2,
            initializer_range: 0.02,
            layer_norm_eps: 1e-12,
            pad_token_id: 0,
            position_embedding_type: defaults::position_embedding_type(),
            classifier_dropout: None,
            num_labels: None,
            id2label: None,
            label2id: None,
            architectures: Vec::new(),
            tie_word_embeddings: true,
            model_type: defaults::model_type(),
            problem_type: None,
        }
    }

    /// BERT-base: 12 layers, 768 hidden, 12 heads (110M parameters).
    pub fn base() -> Self {
        Self::sized(12, 768, 12)
    }

    /// BERT-large: 24 layers, 1024 hidden, 16 heads (340M parameters).
    pub fn large() -> Self {
        Self::sized(24, 1024, 16)
    }

    /// BERT-mini (Turc et al.): 4 layers, 256 hidden, 4 heads.
    pub fn mini() -> Self {
        Self::sized(4, 256, 4)
    }

    /// BERT-tiny (Turc et al.): 2 layers, 128 hidden, 2 heads.
    pub fn tiny() -> Self {
        Self::sized(2, 128, 2)
    }

    /// A preset by name: `base`, `large`, `mini`, `tiny`.
    pub fn preset(name: &str) -> Result<Self, BertError> {
        match name {
            "base" | "bert-base" => Ok(Self::base()),
            "large" | "bert-large" => Ok(Self::large()),
            "mini" | "bert-mini" => Ok(Self::mini()),
            "tiny" | "bert-tiny" => Ok(Self::tiny()),
            other => Err(BertError::Config(format!(
                "unknown model preset '{other}' (known: base, large, mini, tiny)"
            ))),
        }
    }

    /// Head size `hidden_size / num_attention_heads`.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads.max(1)
    }

    /// Number of labels: `num_labels`, else the size of `id2label`, else 2 (HF's default).
    pub fn num_labels(&self) -> usize {
        self.num_labels
            .or_else(|| self.id2label.as_ref().map(|m| m.len()))
            .unwrap_or(2)
    }

    /// Dropout probability used in front of classification heads.
    pub fn classifier_dropout(&self) -> f64 {
        self.classifier_dropout.unwrap_or(self.hidden_dropout_prob)
    }

    /// Label names ordered by id (`LABEL_i` where `id2label` has no entry).
    pub fn labels(&self) -> Vec<String> {
        (0..self.num_labels())
            .map(|i| {
                self.id2label
                    .as_ref()
                    .and_then(|m| m.get(&i.to_string()).cloned())
                    .unwrap_or_else(|| format!("LABEL_{i}"))
            })
            .collect()
    }

    /// Sets `num_labels`, `id2label` and `label2id` from label names ordered by id.
    pub fn with_labels<S: AsRef<str>>(mut self, labels: &[S]) -> Self {
        self.num_labels = Some(labels.len());
        self.id2label = Some(
            labels
                .iter()
                .enumerate()
                .map(|(i, l)| (i.to_string(), l.as_ref().to_string()))
                .collect(),
        );
        self.label2id = Some(
            labels
                .iter()
                .enumerate()
                .map(|(i, l)| (l.as_ref().to_string(), i))
                .collect(),
        );
        self
    }

    /// Checks that every value can be honoured by this implementation.
    pub fn validate(&self) -> Result<(), BertError> {
        let err = |m: String| Err(BertError::Config(m));
        if self.position_embedding_type != "absolute" {
            return err(format!(
                "position_embedding_type '{}' is not supported (only 'absolute')",
                self.position_embedding_type
            ));
        }
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        for (name, value) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("type_vocab_size", self.type_vocab_size),
        ] {
            if value == 0 {
                return err(format!("{name} must be positive"));
            }
        }
        if self.pad_token_id >= self.vocab_size {
            return err(format!(
                "pad_token_id {} is outside the vocabulary of {}",
                self.pad_token_id, self.vocab_size
            ));
        }
        for (name, p) in [
            ("hidden_dropout_prob", self.hidden_dropout_prob),
            (
                "attention_probs_dropout_prob",
                self.attention_probs_dropout_prob,
            ),
            ("classifier_dropout", self.classifier_dropout()),
        ] {
            if !(0.0..1.0).contains(&p) {
                return err(format!("{name} must be in [0, 1), got {p}"));
            }
        }
        if self.model_type != "bert" {
            return err(format!(
                "model_type '{}' is not a BERT model (expected 'bert')",
                self.model_type
            ));
        }
        Ok(())
    }

    /// Parses a Hugging Face `config.json` text; unknown keys are ignored.
    pub fn from_json_str(text: &str) -> Result<Self, BertError> {
        let config: Self = serde_json::from_str(text)
            .map_err(|e| BertError::Config(format!("invalid config.json: {e}")))?;
        config.validate()?;
        Ok(config)
    }

    /// Reads a Hugging Face `config.json`.
    pub fn from_json_file(path: impl AsRef<Path>) -> Result<Self, BertError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| BertError::io(path, e))?;
        Self::from_json_str(&text).map_err(|e| e.in_file(path))
    }

    /// Parses a TOML table with the same keys; unknown keys are an error.
    pub fn from_toml_str(text: &str) -> Result<Self, BertError> {
        let value: toml::Table =
            toml::from_str(text).map_err(|e| BertError::Config(format!("invalid TOML: {e}")))?;
        Self::from_toml_table(value)
    }

    /// Builds a config from an already parsed TOML table (for example the `[model]` section
    /// of a run config); unknown keys are an error. A `preset` key picks the starting point.
    pub fn from_toml_table(mut table: toml::Table) -> Result<Self, BertError> {
        let base = match table.remove("preset") {
            Some(toml::Value::String(name)) => Self::preset(&name)?,
            Some(other) => {
                return Err(BertError::Config(format!(
                    "preset must be a string, got {other}"
                )));
            }
            None => Self::base(),
        };
        let known = Self::known_keys();
        if let Some(key) = table.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(BertError::Config(format!(
                "unknown model config key '{key}' (known: preset, {})",
                known.join(", ")
            )));
        }
        let mut merged = serde_json::to_value(&base)
            .map_err(|e| BertError::Config(format!("cannot serialise preset: {e}")))?;
        let overrides = serde_json::to_value(&table)
            .map_err(|e| BertError::Config(format!("invalid model config: {e}")))?;
        if let (Some(m), serde_json::Value::Object(o)) = (merged.as_object_mut(), overrides) {
            m.extend(o);
        }
        let config: Self = serde_json::from_value(merged)
            .map_err(|e| BertError::Config(format!("invalid model config: {e}")))?;
        config.validate()?;
        Ok(config)
    }

    /// The keys this struct reads.
    pub fn known_keys() -> &'static [&'static str] {
        &[
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "hidden_act",
            "hidden_dropout_prob",
            "attention_probs_dropout_prob",
            "max_position_embeddings",
            "type_vocab_size",
            "initializer_range",
            "layer_norm_eps",
            "pad_token_id",
            "position_embedding_type",
            "classifier_dropout",
            "num_labels",
            "id2label",
            "label2id",
            "architectures",
            "tie_word_embeddings",
            "model_type",
            "problem_type",
        ]
    }

    /// The config as HF `config.json` text (pretty-printed).
    pub fn to_json_string(&self) -> String {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        if let Some(map) = value.as_object_mut() {
            // `num_labels` is not a stored HF key: transformers derives it from id2label.
            map.remove("num_labels");
            if self.id2label.is_none() && self.num_labels.is_some() {
                let labels = self.labels();
                let id2label: BTreeMap<String, String> = labels
                    .iter()
                    .enumerate()
                    .map(|(i, l)| (i.to_string(), l.clone()))
                    .collect();
                let label2id: BTreeMap<String, usize> = labels
                    .iter()
                    .enumerate()
                    .map(|(i, l)| (l.clone(), i))
                    .collect();
                map.insert("id2label".into(), serde_json::json!(id2label));
                map.insert("label2id".into(), serde_json::json!(label2id));
            }
        }
        serde_json::to_string_pretty(&value).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_hf_config_and_ignores_unknown_keys() {
        let text = r#"{"architectures":["BertModel"],"attention_probs_dropout_prob":0.1,
            "gradient_checkpointing":false,"hidden_act":"gelu","hidden_dropout_prob":0.1,
            "hidden_size":384,"initializer_range":0.02,"intermediate_size":1536,
            "layer_norm_eps":1e-12,"max_position_embeddings":512,"model_type":"bert",
            "num_attention_heads":12,"num_hidden_layers":6,"pad_token_id":0,
            "position_embedding_type":"absolute","transformers_version":"4.8.2",
            "type_vocab_size":2,"use_cache":true,"vocab_size":30522}"#;
        let c = BertConfig::from_json_str(text).expect("parses");
        assert_eq!(c.hidden_size, 384);
        assert_eq!(c.num_hidden_layers, 6);
        assert_eq!(c.head_dim(), 32);
        assert_eq!(c.architectures, vec!["BertModel".to_string()]);
    }

    #[test]
    fn activations_and_their_aliases() {
        for (name, act) in [
            ("gelu", HiddenAct::Gelu),
            ("gelu_new", HiddenAct::GeluTanh),
            ("gelu_pytorch_tanh", HiddenAct::GeluTanh),
            ("relu", HiddenAct::Relu),
            ("swish", HiddenAct::Silu),
        ] {
            let c = BertConfig::from_json_str(&format!(r#"{{"hidden_act":"{name}"}}"#))
                .expect("parses");
            assert_eq!(c.hidden_act, act);
        }
        assert!(BertConfig::from_json_str(r#"{"hidden_act":"mish"}"#).is_err());
    }

    #[test]
    fn rejects_values_it_cannot_honour() {
        let e = BertConfig::from_json_str(r#"{"position_embedding_type":"relative_key"}"#)
            .expect_err("relative positions are not supported");
        assert!(e.to_string().contains("relative_key"), "{e}");
        let e = BertConfig::from_json_str(r#"{"hidden_size":100,"num_attention_heads":12}"#)
            .expect_err("heads must divide hidden");
        assert!(e.to_string().contains("multiple"), "{e}");
        assert!(BertConfig::from_json_str(r#"{"model_type":"roberta"}"#).is_err());
    }

    #[test]
    fn toml_with_preset_and_overrides_and_unknown_key() {
        let c = BertConfig::from_toml_str("preset = \"mini\"\nvocab_size = 1000\n").expect("ok");
        assert_eq!(
            (c.num_hidden_layers, c.hidden_size, c.vocab_size),
            (4, 256, 1000)
        );
        let e = BertConfig::from_toml_str("hiden_size = 12\n").expect_err("typo");
        assert!(e.to_string().contains("hiden_size"), "{e}");
    }

    #[test]
    fn json_round_trip_keeps_labels() {
        let c = BertConfig::tiny().with_labels(&["neg", "pos"]);
        let text = c.to_json_string();
        assert!(!text.contains("num_labels"));
        let back = BertConfig::from_json_str(&text).expect("parses");
        assert_eq!(back.num_labels(), 2);
        assert_eq!(back.labels(), vec!["neg", "pos"]);
    }

    #[test]
    fn presets_have_published_sizes() {
        let b = BertConfig::base();
        assert_eq!(
            (b.num_hidden_layers, b.hidden_size, b.intermediate_size),
            (12, 768, 3072)
        );
        let l = BertConfig::large();
        assert_eq!(
            (l.num_hidden_layers, l.hidden_size, l.num_attention_heads),
            (24, 1024, 16)
        );
        assert!(BertConfig::preset("huge").is_err());
    }
}
