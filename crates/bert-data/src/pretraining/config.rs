//! The `[data]` section of a pretraining config: where the corpus is and how sequences are
//! cut and masked.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::pretraining::instances::InstanceConfig;
use crate::pretraining::masking::{MaskingConfig, MaskingMode};
use crate::pretraining::stream::StreamConfig;

/// Pretraining data settings (TOML `[data]`); unknown keys are an error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PretrainingDataConfig {
    /// Model directory whose tokenizer is used (defaults to the model's `init_from`).
    #[serde(default)]
    pub tokenizer: Option<PathBuf>,
    /// When set and `tokenizer` names a directory without tokenizer files, a WordPiece
    /// vocabulary of this size is trained on `train_files` and saved there first.
    #[serde(default)]
    pub train_tokenizer_vocab_size: Option<usize>,
    /// Training text files or globs (google format: a sentence per line, blank line between
    /// documents).
    #[serde(default)]
    pub train_files: Vec<String>,
    /// Held-out text files or globs.
    #[serde(default)]
    pub valid_files: Vec<String>,
    /// Where prepared shards go (`train/` and `valid/` below it).
    #[serde(default)]
    pub prepared_dir: Option<PathBuf>,
    /// Longest sequence, specials included.
    #[serde(default = "d::max_seq_length")]
    pub max_seq_length: usize,
    /// Probability of a shorter random target length.
    #[serde(default = "d::short_seq_prob")]
    pub short_seq_prob: f64,
    /// Sentence pairs with NSP labels (false: single segments, MLM only).
    #[serde(default = "d::yes")]
    pub next_sentence_prediction: bool,
    /// Fraction of tokens predicted.
    #[serde(default = "d::mlm_probability")]
    pub mlm_probability: f64,
    /// Cap on predictions per sequence (static masking).
    #[serde(default = "d::max_predictions")]
    pub max_predictions_per_seq: usize,
    /// Mask whole words.
    #[serde(default)]
    pub whole_word_mask: bool,
    /// `static` or `dynamic`.
    #[serde(default)]
    pub masking: MaskingMode,
    /// Static copies.
    #[serde(default = "d::dupe_factor")]
    pub dupe_factor: usize,
    /// Documents shuffled together.
    #[serde(default = "d::window_documents")]
    pub window_documents: usize,
    /// Pad batches to a multiple of this.
    #[serde(default)]
    pub pad_to_multiple_of: Option<usize>,
    /// Lines per tokenization chunk in `bert data prepare`.
    #[serde(default = "d::chunk_lines")]
    pub chunk_lines: usize,
}

mod d {
    pub fn max_seq_length() -> usize {
        128
    }
    pub fn short_seq_prob() -> f64 {
        0.1
    }
    pub fn yes() -> bool {
        true
    }
    pub fn mlm_probability() -> f64 {
        0.15
    }
    pub fn max_predictions() -> usize {
        20
    }
    pub fn dupe_factor() -> usize {
        10
    }
    pub fn window_documents() -> usize {
        256
    }
    pub fn chunk_lines() -> usize {
        20_000
    }
}

impl Default for PretrainingDataConfig {
    fn default() -> Self {
        toml::from_str("").unwrap_or_else(|_| unreachable!("every field has a default"))
    }
}

impl PretrainingDataConfig {
    /// The stream settings for a seed.
    pub fn stream_config(&self, seed: u64) -> StreamConfig {
        StreamConfig {
            instances: InstanceConfig {
                max_seq_length: self.max_seq_length,
                short_seq_prob: self.short_seq_prob,
                next_sentence_prediction: self.next_sentence_prediction,
            },
            masking: MaskingConfig {
                mlm_probability: self.mlm_probability,
                max_predictions_per_seq: self.max_predictions_per_seq,
                whole_word_mask: self.whole_word_mask,
                mode: self.masking,
                dupe_factor: self.dupe_factor,
            },
            seed,
            window_documents: self.window_documents,
            pad_to_multiple_of: self.pad_to_multiple_of,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_unknown_keys() {
        let c = PretrainingDataConfig::default();
        assert_eq!(
            (c.max_seq_length, c.dupe_factor, c.masking),
            (128, 10, MaskingMode::Dynamic)
        );
        let c: PretrainingDataConfig = toml::from_str(
            "train_files = [\"a.txt\"]\nmasking = \"static\"\nwhole_word_mask = true",
        )
        .expect("parse");
        assert_eq!(c.stream_config(1).masking.mode, MaskingMode::Static);
        let err = toml::from_str::<PretrainingDataConfig>("mlm_prob = 0.2").expect_err("typo");
        assert!(err.to_string().contains("mlm_prob"), "{err}");
    }
}
