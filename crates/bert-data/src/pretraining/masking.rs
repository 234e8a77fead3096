//! Masked-LM masking over token ids.
//!
//! - [`mask_static`]: google-research/bert's `create_masked_lm_predictions`: exactly
//!   `min(max_predictions_per_seq, max(1, round(len · mlm_probability)))` positions (Python's
//!   round, ties to even), chosen from shuffled candidate groups.
//! - [`mask_dynamic`]: Hugging Face's `DataCollatorForLanguageModeling`: each candidate is
//!   masked with probability `mlm_probability`, independently, every time it is served.
//!
//! Both: 80 % `[MASK]`, 10 % a random token, 10 % unchanged; never `[CLS]`, `[SEP]` or `[PAD]`;
//! labels `-100` where nothing is predicted. With whole-word masking, a word's `##` pieces form
//! one candidate and are masked together.

use rand::Rng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

/// The label of a position that is not predicted (ignored by the loss).
pub const IGNORE_INDEX: i64 = -100;

/// When masks are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MaskingMode {
    /// Fixed masks: `dupe_factor` copies of each sequence, each with its own mask
    /// (google-research/bert).
    Static,
    /// A new mask every time a sequence is served (RoBERTa, HF's collator).
    #[default]
    Dynamic,
}

/// Masking hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskingConfig {
    /// Fraction of tokens predicted (0.15).
    #[serde(default = "default_mlm_probability")]
    pub mlm_probability: f64,
    /// Cap on predictions per sequence (static mode; 20 for seq 128, 80 for seq 512).
    #[serde(default = "default_max_predictions")]
    pub max_predictions_per_seq: usize,
    /// Mask whole words (all `##` pieces of a word together).
    #[serde(default)]
    pub whole_word_mask: bool,
    /// Static or dynamic.
    #[serde(default)]
    pub mode: MaskingMode,
    /// Copies with different masks in static mode (google's default 10).
    #[serde(default = "default_dupe_factor")]
    pub dupe_factor: usize,
}

fn default_mlm_probability() -> f64 {
    0.15
}
fn default_max_predictions() -> usize {
    20
}
fn default_dupe_factor() -> usize {
    10
}

impl Default for MaskingConfig {
    fn default() -> Self {
        Self {
            mlm_probability: default_mlm_probability(),
            max_predictions_per_seq: default_max_predictions(),
            whole_word_mask: false,
            mode: MaskingMode::Dynamic,
            dupe_factor: default_dupe_factor(),
        }
    }
}

/// What the masker needs to know about the vocabulary.
#[derive(Debug, Clone)]
pub struct MaskVocab {
    /// `[MASK]` id.
    pub mask_id: u32,
    /// Vocabulary size (random replacements are drawn from `0..vocab_size`, as both
    /// google-research/bert and HF do).
    pub vocab_size: u32,
    /// Ids never masked (`[CLS]`, `[SEP]`, `[PAD]`).
    pub special_ids: Vec<u32>,
    /// `is_continuation[id]`: the token starts with `##` (whole-word grouping).
    pub is_continuation: Vec<bool>,
}

impl MaskVocab {
    /// From a tokenizer: `[MASK]` must exist.
    pub fn from_tokenizer(
        tokenizer: &crate::tokenizer::BertTokenizer,
    ) -> Result<Self, crate::DataError> {
        let special = tokenizer.special_tokens();
        let vocab_size = tokenizer.vocab_size() as u32;
        let is_continuation = (0..vocab_size)
            .map(|id| {
                tokenizer
                    .id_to_token(id)
                    .is_some_and(|t| t.starts_with("##"))
            })
            .collect();
        Ok(Self {
            mask_id: tokenizer.mask_id()?,
            vocab_size,
            special_ids: vec![special.cls, special.sep, special.pad],
            is_continuation,
        })
    }

    fn is_special(&self, id: u32) -> bool {
        self.special_ids.contains(&id)
    }

    fn continues_word(&self, id: u32) -> bool {
        self.is_continuation
            .get(id as usize)
            .copied()
            .unwrap_or(false)
    }
}

/// A masked sequence: the ids fed to the model and one label per position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Masked {
    /// Ids after replacement.
    pub input_ids: Vec<u32>,
    /// Original id where a prediction is made, [`IGNORE_INDEX`] elsewhere.
    pub labels: Vec<i64>,
}

/// Candidate groups: single positions, or whole words (a position and its `##` followers).
fn candidates(ids: &[u32], vocab: &MaskVocab, whole_word: bool) -> Vec<Vec<usize>> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut previous_was_candidate = false;
    for (i, &id) in ids.iter().enumerate() {
        if vocab.is_special(id) {
            previous_was_candidate = false;
            continue;
        }
        match groups.last_mut() {
            Some(last) if whole_word && previous_was_candidate && vocab.continues_word(id) => {
                last.push(i)
            }
            _ => groups.push(vec![i]),
        }
        previous_was_candidate = true;
    }
    groups
}

fn replace<R: Rng>(rng: &mut R, original: u32, vocab: &MaskVocab) -> u32 {
    if rng.random::<f64>() < 0.8 {
        vocab.mask_id
    } else if rng.random::<f64>() < 0.5 {
        original
    } else {
        rng.random_range(0..vocab.vocab_size)
    }
}

/// Python 3's `round` (ties to even), as google-research/bert uses it.
fn python_round(x: f64) -> usize {
    x.round_ties_even().max(0.0) as usize
}

/// Number of predictions of a static mask for a sequence of `len` tokens (specials included,
/// as google-research/bert counts them).
pub fn num_to_predict(len: usize, config: &MaskingConfig) -> usize {
    config
        .max_predictions_per_seq
        .min(python_round(len as f64 * config.mlm_probability).max(1))
}

/// google-research/bert's static masking of one sequence.
pub fn mask_static<R: Rng>(
    ids: &[u32],
    config: &MaskingConfig,
    vocab: &MaskVocab,
    rng: &mut R,
) -> Masked {
    let mut groups = candidates(ids, vocab, config.whole_word_mask);
    groups.shuffle(rng);
    let target = num_to_predict(ids.len(), config);
    let mut input_ids = ids.to_vec();
    let mut labels = vec![IGNORE_INDEX; ids.len()];
    let mut count = 0;
    for group in groups {
        if count >= target {
            break;
        }
        if count + group.len() > target {
            continue;
        }
        for i in group {
            input_ids[i] = replace(rng, ids[i], vocab);
            labels[i] = i64::from(ids[i]);
            count += 1;
        }
    }
    Masked { input_ids, labels }
}

/// HF-collator dynamic masking of one sequence: each candidate (word) with probability
/// `mlm_probability`.
pub fn mask_dynamic<R: Rng>(
    ids: &[u32],
    config: &MaskingConfig,
    vocab: &MaskVocab,
    rng: &mut R,
) -> Masked {
    let mut input_ids = ids.to_vec();
    let mut labels = vec![IGNORE_INDEX; ids.len()];
    for group in candidates(ids, vocab, config.whole_word_mask) {
        if rng.random::<f64>() >= config.mlm_probability {
            continue;
        }
        for i in group {
            input_ids[i] = replace(rng, ids[i], vocab);
            labels[i] = i64::from(ids[i]);
        }
    }
    Masked { input_ids, labels }
}

/// Masks with the configured mode.
pub fn mask<R: Rng>(ids: &[u32], config: &MaskingConfig, vocab: &MaskVocab, rng: &mut R) -> Masked {
    match config.mode {
        MaskingMode::Static => mask_static(ids, config, vocab, rng),
        MaskingMode::Dynamic => mask_dynamic(ids, config, vocab, rng),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    // 0 [PAD], 1 [UNK], 2 [CLS], 3 [SEP], 4 [MASK], 5..100 words, 100..200 "##" pieces.
    fn vocab() -> MaskVocab {
        MaskVocab {
            mask_id: 4,
            vocab_size: 200,
            special_ids: vec![2, 3, 0],
            is_continuation: (0..200).map(|i| i >= 100).collect(),
        }
    }

    fn sequence(rng: &mut ChaCha8Rng, len: usize) -> Vec<u32> {
        let mut ids = vec![2];
        while ids.len() < len - 1 {
            ids.push(rng.random_range(5..200));
        }
        ids.push(3);
        ids
    }

    struct Rates {
        tokens: usize,
        predicted: usize,
        candidates: usize,
        masked: usize,
        random: usize,
        kept: usize,
    }

    fn measure(config: &MaskingConfig, tokens: usize) -> Rates {
        let v = vocab();
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut r = Rates {
            tokens: 0,
            predicted: 0,
            candidates: 0,
            masked: 0,
            random: 0,
            kept: 0,
        };
        let mut seen = 0;
        while seen < tokens {
            let ids = sequence(&mut rng, 128);
            let m = mask(&ids, config, &v, &mut rng);
            seen += ids.len();
            r.tokens += ids.len();
            r.candidates += ids.len() - 2;
            for (i, &label) in m.labels.iter().enumerate() {
                if label == IGNORE_INDEX {
                    assert_eq!(
                        m.input_ids[i], ids[i],
                        "unpredicted positions are unchanged"
                    );
                    continue;
                }
                assert!(!v.is_special(ids[i]), "a special token was masked");
                assert_eq!(label, i64::from(ids[i]));
                r.predicted += 1;
                if m.input_ids[i] == v.mask_id {
                    r.masked += 1;
                } else if m.input_ids[i] == ids[i] {
                    r.kept += 1;
                } else {
                    r.random += 1;
                }
            }
        }
        r
    }

    fn assert_80_10_10(r: &Rates) {
        let p = r.predicted as f64;
        let (m, rnd, k) = (r.masked as f64 / p, r.random as f64 / p, r.kept as f64 / p);
        assert!((m - 0.8).abs() < 0.01, "mask share {m}");
        // A random draw can hit the original token (1/200): counted as kept.
        assert!((rnd - 0.1).abs() < 0.01, "random share {rnd}");
        assert!((k - 0.1).abs() < 0.01, "kept share {k}");
    }

    #[test]
    fn dynamic_masking_rates_over_200k_tokens() {
        let config = MaskingConfig::default();
        let r = measure(&config, 200_000);
        let rate = r.predicted as f64 / r.candidates as f64;
        assert!((rate - 0.15).abs() < 0.01, "masking rate {rate}");
        assert_80_10_10(&r);
    }

    #[test]
    fn static_masking_predicts_exactly_the_google_count() {
        let config = MaskingConfig {
            mode: MaskingMode::Static,
            max_predictions_per_seq: 100,
            ..Default::default()
        };
        let v = vocab();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for len in [3, 10, 50, 128] {
            let ids = sequence(&mut rng, len);
            let m = mask_static(&ids, &config, &v, &mut rng);
            let n = m.labels.iter().filter(|&&l| l != IGNORE_INDEX).count();
            assert_eq!(n, num_to_predict(len, &config), "len {len}");
        }
        assert_eq!(num_to_predict(10, &config), 2); // round(1.5) = 2
        assert_eq!(num_to_predict(30, &config), 4); // round(4.5) = 4, ties to even
        assert_eq!(num_to_predict(3, &config), 1); // max(1, …)
        let capped = MaskingConfig {
            max_predictions_per_seq: 20,
            ..config.clone()
        };
        assert_eq!(num_to_predict(512, &capped), 20);
        let r = measure(&config, 200_000);
        // google counts [CLS]/[SEP] in the length: 15 % of all tokens.
        let rate = r.predicted as f64 / r.tokens as f64;
        assert!((rate - 0.15).abs() < 0.01, "static rate {rate}");
        assert_80_10_10(&r);
    }

    #[test]
    fn whole_words_are_masked_together() {
        let v = vocab();
        for mode in [MaskingMode::Static, MaskingMode::Dynamic] {
            let config = MaskingConfig {
                whole_word_mask: true,
                mode,
                max_predictions_per_seq: 100,
                ..Default::default()
            };
            let mut rng = ChaCha8Rng::seed_from_u64(11);
            let mut groups_seen = 0;
            for _ in 0..500 {
                let ids = sequence(&mut rng, 64);
                let m = mask(&ids, &config, &v, &mut rng);
                for group in candidates(&ids, &v, true) {
                    let hit: Vec<bool> =
                        group.iter().map(|&i| m.labels[i] != IGNORE_INDEX).collect();
                    assert!(
                        hit.iter().all(|&h| h == hit[0]),
                        "{mode:?}: partial word {group:?}"
                    );
                    if hit[0] && group.len() > 1 {
                        groups_seen += 1;
                    }
                }
            }
            assert!(groups_seen > 50, "{mode:?}: multi-piece words were masked");
        }
    }

    #[test]
    fn masking_is_reproducible_for_a_seed() {
        let v = vocab();
        let config = MaskingConfig::default();
        let ids = sequence(&mut ChaCha8Rng::seed_from_u64(1), 128);
        let a = mask(&ids, &config, &v, &mut ChaCha8Rng::seed_from_u64(42));
        let b = mask(&ids, &config, &v, &mut ChaCha8Rng::seed_from_u64(42));
        let c = mask(&ids, &config, &v, &mut ChaCha8Rng::seed_from_u64(43));
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn padding_is_never_masked() {
        let v = vocab();
        let mut ids = vec![2, 10, 11, 3];
        ids.extend([0; 60]);
        let config = MaskingConfig {
            mlm_probability: 0.99,
            ..Default::default()
        };
        let m = mask_dynamic(&ids, &config, &v, &mut ChaCha8Rng::seed_from_u64(0));
        assert!(m.labels[4..].iter().all(|&l| l == IGNORE_INDEX));
        assert!(m.labels[1] != IGNORE_INDEX || m.labels[2] != IGNORE_INDEX);
    }
}
