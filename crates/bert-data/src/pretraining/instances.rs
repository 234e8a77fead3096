//! Sentence-pair (NSP) instances exactly as google-research/bert's
//! `create_instances_from_document`, and RoBERTa-style single segments when NSP is off.

use rand::Rng;
use serde::{Deserialize, Serialize};

/// A corpus of documents, each a list of tokenized sentences.
pub trait Documents {
    /// Number of documents.
    fn num_documents(&self) -> usize;
    /// The sentences of document `index`.
    fn sentences(&self, index: usize) -> Vec<&[u32]>;
}

impl Documents for Vec<Vec<Vec<u32>>> {
    fn num_documents(&self) -> usize {
        self.len()
    }
    fn sentences(&self, index: usize) -> Vec<&[u32]> {
        self[index].iter().map(Vec::as_slice).collect()
    }
}

/// How sequences are cut from documents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceConfig {
    /// Longest sequence, specials included (128 in phase 1, 512 in phase 2).
    #[serde(default = "default_max_seq_length")]
    pub max_seq_length: usize,
    /// Probability of a random shorter target length (0.1).
    #[serde(default = "default_short_seq_prob")]
    pub short_seq_prob: f64,
    /// Sentence pairs with a next-sentence label; off: one segment of whole sentences
    /// (RoBERTa's DOC-SENTENCES).
    #[serde(default = "default_nsp")]
    pub next_sentence_prediction: bool,
}

fn default_max_seq_length() -> usize {
    128
}
fn default_short_seq_prob() -> f64 {
    0.1
}
fn default_nsp() -> bool {
    true
}

impl Default for InstanceConfig {
    fn default() -> Self {
        Self {
            max_seq_length: default_max_seq_length(),
            short_seq_prob: default_short_seq_prob(),
            next_sentence_prediction: true,
        }
    }
}

/// Segments of one training sequence, before specials and masking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// Segment A.
    pub tokens_a: Vec<u32>,
    /// Segment B (empty when NSP is off).
    pub tokens_b: Vec<u32>,
    /// B comes from another document (NSP label 1); false when B follows A (label 0).
    pub is_random_next: bool,
}

impl Instance {
    /// `[CLS] A [SEP] (B [SEP])` ids and segment ids.
    pub fn to_sequence(&self, cls: u32, sep: u32) -> (Vec<u32>, Vec<u32>) {
        let mut ids = Vec::with_capacity(self.tokens_a.len() + self.tokens_b.len() + 3);
        ids.push(cls);
        ids.extend(&self.tokens_a);
        ids.push(sep);
        let mut types = vec![0; ids.len()];
        if !self.tokens_b.is_empty() {
            ids.extend(&self.tokens_b);
            ids.push(sep);
            types.resize(ids.len(), 1);
        }
        (ids, types)
    }
}

/// google-research/bert's `truncate_seq_pair`: drop tokens at random from the front or back of
/// the longer segment until the pair fits.
pub fn truncate_seq_pair<R: Rng>(
    a: &mut Vec<u32>,
    b: &mut Vec<u32>,
    max_num_tokens: usize,
    rng: &mut R,
) {
    while a.len() + b.len() > max_num_tokens {
        let longer = if a.len() > b.len() { &mut *a } else { &mut *b };
        if longer.is_empty() {
            break;
        }
        if rng.random::<f64>() < 0.5 {
            longer.remove(0);
        } else {
            longer.pop();
        }
    }
}

fn target_length<R: Rng>(max_num_tokens: usize, config: &InstanceConfig, rng: &mut R) -> usize {
    if rng.random::<f64>() < config.short_seq_prob && max_num_tokens > 2 {
        rng.random_range(2..=max_num_tokens)
    } else {
        max_num_tokens
    }
}

/// All instances of document `index` (google's algorithm, or single segments without NSP).
pub fn instances_from_document<D: Documents + ?Sized, R: Rng>(
    docs: &D,
    index: usize,
    config: &InstanceConfig,
    rng: &mut R,
) -> Vec<Instance> {
    if config.next_sentence_prediction {
        nsp_instances(docs, index, config, rng)
    } else {
        single_segment_instances(docs, index, config, rng)
    }
}

fn nsp_instances<D: Documents + ?Sized, R: Rng>(
    docs: &D,
    index: usize,
    config: &InstanceConfig,
    rng: &mut R,
) -> Vec<Instance> {
    let document = docs.sentences(index);
    let max_num_tokens = config.max_seq_length.saturating_sub(3).max(2);
    let target = target_length(max_num_tokens, config, rng);
    let mut instances = Vec::new();
    let mut chunk: Vec<&[u32]> = Vec::new();
    let mut chunk_len = 0;
    let mut i = 0;
    while i < document.len() {
        chunk.push(document[i]);
        chunk_len += document[i].len();
        if i == document.len() - 1 || chunk_len >= target {
            if !chunk.is_empty() {
                let a_end = if chunk.len() >= 2 {
                    rng.random_range(1..chunk.len())
                } else {
                    1
                };
                let mut tokens_a: Vec<u32> = chunk[..a_end].concat();
                let mut tokens_b: Vec<u32> = Vec::new();
                let is_random_next = chunk.len() == 1 || rng.random::<f64>() < 0.5;
                if is_random_next && docs.num_documents() > 1 {
                    let target_b = target.saturating_sub(tokens_a.len());
                    let mut other = index;
                    for _ in 0..10 {
                        other = rng.random_range(0..docs.num_documents());
                        if other != index {
                            break;
                        }
                    }
                    let random_doc = docs.sentences(other);
                    if !random_doc.is_empty() {
                        let start = rng.random_range(0..random_doc.len());
                        for sentence in &random_doc[start..] {
                            tokens_b.extend_from_slice(sentence);
                            if tokens_b.len() >= target_b {
                                break;
                            }
                        }
                    }
                    // The unused sentences of this chunk go back to the document.
                    i -= chunk.len() - a_end;
                } else {
                    tokens_b = chunk[a_end..].concat();
                }
                // A single-document corpus cannot give a random B: the pair is dropped.
                let is_random_next = is_random_next && docs.num_documents() > 1;
                truncate_seq_pair(&mut tokens_a, &mut tokens_b, max_num_tokens, rng);
                if !tokens_a.is_empty() && !tokens_b.is_empty() {
                    instances.push(Instance {
                        tokens_a,
                        tokens_b,
                        is_random_next,
                    });
                }
            }
            chunk.clear();
            chunk_len = 0;
        }
        i += 1;
    }
    instances
}

fn single_segment_instances<D: Documents + ?Sized, R: Rng>(
    docs: &D,
    index: usize,
    config: &InstanceConfig,
    rng: &mut R,
) -> Vec<Instance> {
    let document = docs.sentences(index);
    let max_num_tokens = config.max_seq_length.saturating_sub(2).max(1);
    let mut target = target_length(max_num_tokens, config, rng);
    let mut instances = Vec::new();
    let mut current: Vec<u32> = Vec::new();
    for (i, sentence) in document.iter().enumerate() {
        current.extend_from_slice(sentence);
        if i == document.len() - 1 || current.len() >= target {
            current.truncate(max_num_tokens);
            if !current.is_empty() {
                instances.push(Instance {
                    tokens_a: std::mem::take(&mut current),
                    tokens_b: Vec::new(),
                    is_random_next: false,
                });
            }
            current.clear();
            target = target_length(max_num_tokens, config, rng);
        }
    }
    instances
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// Documents of sentences with distinct ids: doc d, sentence s, token t → d*10000 + s*100 + t.
    fn corpus(rng: &mut ChaCha8Rng, docs: usize) -> Vec<Vec<Vec<u32>>> {
        (0..docs)
            .map(|d| {
                let n = rng.random_range(1..12);
                (0..n)
                    .map(|s| {
                        let len = rng.random_range(3..40);
                        (0..len)
                            .map(|t| (d * 10000 + s * 100 + t + 5) as u32)
                            .collect()
                    })
                    .collect()
            })
            .collect()
    }

    fn doc_of(id: u32) -> usize {
        ((id - 5) / 10000) as usize
    }

    #[test]
    fn nsp_pairs_respect_lengths_and_labels() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let docs = corpus(&mut rng, 300);
        let config = InstanceConfig {
            max_seq_length: 64,
            ..Default::default()
        };
        let (mut total, mut random) = (0usize, 0usize);
        for d in 0..docs.len() {
            for inst in instances_from_document(&docs, d, &config, &mut rng) {
                assert!(
                    inst.tokens_a.len() + inst.tokens_b.len() <= 61,
                    "over target"
                );
                assert!(!inst.tokens_a.is_empty() && !inst.tokens_b.is_empty());
                assert!(
                    inst.tokens_a.iter().all(|&t| doc_of(t) == d),
                    "A is from its document"
                );
                if inst.is_random_next {
                    random += 1;
                } else {
                    assert!(
                        inst.tokens_b.iter().all(|&t| doc_of(t) == d),
                        "true B continues A"
                    );
                    // B follows A: the first B token comes after the last A token.
                    assert!(inst.tokens_b[0] > *inst.tokens_a.last().expect("A"));
                }
                total += 1;
            }
        }
        let share = random as f64 / total as f64;
        // Single-chunk documents always take a random B, so the share is a bit above 0.5.
        assert!(
            total > 500 && (0.45..0.65).contains(&share),
            "{random}/{total}"
        );
        let (ids, types) = Instance {
            tokens_a: vec![7, 8],
            tokens_b: vec![9],
            is_random_next: false,
        }
        .to_sequence(2, 3);
        assert_eq!(
            (ids, types),
            (vec![2, 7, 8, 3, 9, 3], vec![0, 0, 0, 0, 1, 1])
        );
    }

    #[test]
    fn nsp_random_fraction_is_one_half_on_long_documents() {
        // With documents many chunks long, the only random B's are the coin flips.
        let docs: Vec<Vec<Vec<u32>>> = (0..50)
            .map(|d| (0..200).map(|s| vec![(d * 1000 + s) as u32; 10]).collect())
            .collect();
        let config = InstanceConfig {
            max_seq_length: 64,
            short_seq_prob: 0.0,
            next_sentence_prediction: true,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let all: Vec<Instance> = (0..docs.len())
            .flat_map(|d| instances_from_document(&docs, d, &config, &mut rng))
            .collect();
        let share = all.iter().filter(|i| i.is_random_next).count() as f64 / all.len() as f64;
        assert!(
            all.len() > 1000 && (share - 0.5).abs() < 0.03,
            "{share} of {}",
            all.len()
        );
    }

    #[test]
    fn truncation_cuts_the_longer_segment() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut a: Vec<u32> = (0..50).collect();
        let mut b: Vec<u32> = (100..110).collect();
        truncate_seq_pair(&mut a, &mut b, 30, &mut rng);
        assert_eq!((a.len(), b.len()), (20, 10));
        // Only the ends are cut: what remains is contiguous.
        assert!(a.windows(2).all(|w| w[1] == w[0] + 1));
        assert!(a[0] > 0 && *a.last().expect("a") < 49, "both ends were cut");
    }

    #[test]
    fn single_segments_without_nsp() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let docs = corpus(&mut rng, 50);
        let config = InstanceConfig {
            max_seq_length: 48,
            next_sentence_prediction: false,
            ..Default::default()
        };
        for d in 0..docs.len() {
            for inst in instances_from_document(&docs, d, &config, &mut rng) {
                assert!(inst.tokens_b.is_empty() && !inst.is_random_next);
                assert!(!inst.tokens_a.is_empty() && inst.tokens_a.len() <= 46);
            }
        }
    }

    #[test]
    fn same_seed_same_instances() {
        let docs = corpus(&mut ChaCha8Rng::seed_from_u64(0), 20);
        let config = InstanceConfig::default();
        let run = |seed| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            (0..docs.len())
                .flat_map(|d| instances_from_document(&docs, d, &config, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(4), run(4));
        assert_ne!(run(4), run(5));
    }
}
