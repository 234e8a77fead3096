//! Whole-word masking checked against a word split it does not use: the tokenizer's word ids
//! (from the BERT pre-tokenizer, before WordPiece), where the masker groups `##` pieces. On
//! sentence pairs of the corpus fixtures tokenized by all-MiniLM-L6-v2, over many seeds, in both
//! modes, every word is masked in all of its pieces or in none.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bert_data::pretraining::{IGNORE_INDEX, MaskVocab, Masked, MaskingConfig, MaskingMode, mask};
use bert_data::{BertTokenizer, Encoded};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn minilm() -> BertTokenizer {
    let dir = std::env::var_os("BERT_MINILM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".cache/models/all-MiniLM-L6-v2"));
    BertTokenizer::from_dir(&dir)
        .unwrap_or_else(|e| panic!("{e}: run scripts/fetch_models.sh ({})", dir.display()))
}

/// `[CLS] A [SEP] B [SEP]` of consecutive lines of the corpus fixtures.
fn pairs(tokenizer: &BertTokenizer) -> Vec<Encoded> {
    let mut lines = Vec::new();
    for file in ["moby.txt", "sotu.txt"] {
        let path = root().join("tests/fixtures/corpus").join(file);
        let text = std::fs::read_to_string(&path).expect("corpus fixture");
        lines.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from),
        );
    }
    lines
        .chunks_exact(2)
        .map(|p| tokenizer.encode(&p[0], Some(&p[1])).expect("encode"))
        .collect()
}

/// Positions of each word, keyed by (segment, word id); specials have no word.
fn words(e: &Encoded) -> BTreeMap<(u32, u32), Vec<usize>> {
    let mut words: BTreeMap<(u32, u32), Vec<usize>> = BTreeMap::new();
    for (i, word) in e.word_ids.iter().enumerate() {
        if let Some(w) = word {
            words.entry((e.token_type_ids[i], *w)).or_default().push(i);
        }
    }
    words
}

#[derive(Debug, Default)]
struct Count {
    /// Words with some but not all pieces predicted.
    partial: usize,
    /// Words of two or more pieces predicted in full.
    whole_multi_piece: usize,
    /// Predicted positions.
    predicted: usize,
}

fn count(e: &Encoded, m: &Masked, count: &mut Count) {
    for (i, word) in e.word_ids.iter().enumerate() {
        if word.is_none() {
            assert_eq!(
                m.labels[i], IGNORE_INDEX,
                "special {:?} masked",
                e.tokens[i]
            );
        }
    }
    for positions in words(e).values() {
        let hit = positions
            .iter()
            .filter(|&&i| m.labels[i] != IGNORE_INDEX)
            .count();
        count.predicted += hit;
        if hit > 0 && hit < positions.len() {
            count.partial += 1;
        } else if hit > 1 {
            count.whole_multi_piece += 1;
        }
    }
}

fn run(tokenizer: &BertTokenizer, config: &MaskingConfig, seeds: u64) -> Count {
    let vocab = MaskVocab::from_tokenizer(tokenizer).expect("mask vocab");
    let encoded = pairs(tokenizer);
    let mut total = Count::default();
    for seed in 0..seeds {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        for e in &encoded {
            let m = mask(&e.input_ids, config, &vocab, &mut rng);
            count(e, &m, &mut total);
        }
    }
    total
}

#[test]
fn whole_word_masking_masks_every_piece_of_a_tokenizer_word_or_none() {
    let tokenizer = minilm();
    let encoded = pairs(&tokenizer);
    let multi_piece: usize = encoded
        .iter()
        .map(|e| words(e).values().filter(|p| p.len() > 1).count())
        .sum();
    assert!(
        multi_piece >= 100,
        "the fixtures have words of several pieces: {multi_piece}"
    );
    for mode in [MaskingMode::Static, MaskingMode::Dynamic] {
        let config = MaskingConfig {
            whole_word_mask: true,
            mode,
            ..Default::default()
        };
        let c = run(&tokenizer, &config, 200);
        eprintln!("whole words, {mode:?}, 200 seeds: {c:?}");
        assert_eq!(c.partial, 0, "{mode:?}: partially masked words ({c:?})");
        assert!(
            c.whole_multi_piece >= 1000,
            "{mode:?}: multi-piece words were masked whole ({c:?})"
        );
        assert!(c.predicted > 0);
    }
}

#[test]
fn the_word_split_check_sees_partial_words_of_token_masking() {
    // Without whole-word masking, pieces are drawn one by one: the check above must see
    // partially masked words then, or it could not fail.
    let tokenizer = minilm();
    for mode in [MaskingMode::Static, MaskingMode::Dynamic] {
        let config = MaskingConfig {
            mode,
            ..Default::default()
        };
        let c = run(&tokenizer, &config, 20);
        eprintln!("single tokens, {mode:?}, 20 seeds: {c:?}");
        assert!(c.partial > 100, "{mode:?}: {c:?}");
    }
}
