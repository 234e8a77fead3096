//! Synthetic fine-tuning data and configs over the tiny MLM fixture (its vocabulary is
//! `w5`…`w63`), shared by `finetune_cli.rs` and `wgpu.rs`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use super::common::*;

/// A config for `kind` over the tiny MLM fixture, with extra `[task]` lines.
pub fn task_config(
    dir: &Path,
    name: &str,
    kind: &str,
    files: (&Path, &Path),
    task: &str,
    training: &str,
) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "[model]\ninit_from = \"{}\"\n\n[task]\nkind = \"{kind}\"\ntrain_file = \"{}\"\nvalid_file = \"{}\"\n{task}\n\n[optimizer]\nlearning_rate = 5e-3\n\n[schedule]\nwarmup_ratio = 0.1\n\n[training]\nlog_every_steps = 5\n{training}\n\n[output]\ndir = \"{}\"\n",
            root().join("tests/fixtures/tiny-bert/BertForMaskedLM").display(),
            files.0.display(),
            files.1.display(),
            dir.join(name).display()
        ),
    )
    .expect("config");
    path
}

/// Deterministic pseudo-random numbers for the synthetic data.
pub struct Lcg(pub u64);
impl Lcg {
    pub fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// SQuAD-format data: contexts of 6–9 filler words (w40..w60) with one answer word from
/// w5..w20 somewhere; the question is always "w61 w62".
pub fn write_squad(path: &Path, questions: usize, seed: u64) {
    let mut rng = Lcg(seed);
    let mut paragraphs = Vec::new();
    for q in 0..questions {
        let len = 6 + rng.next(4) as usize;
        let at = rng.next(len as u64) as usize;
        let words: Vec<String> = (0..len)
            .map(|i| {
                if i == at {
                    format!("w{}", 5 + rng.next(16))
                } else {
                    format!("w{}", 40 + rng.next(21))
                }
            })
            .collect();
        let context = words.join(" ");
        let start = words[..at].iter().map(|w| w.len() + 1).sum::<usize>();
        paragraphs.push(serde_json::json!({
            "context": context,
            "qas": [{"id": format!("q{q}"), "question": "w61 w62", "answers": [{"text": words[at], "answer_start": start}]}],
        }));
    }
    let doc = serde_json::json!({"version": "1.1", "data": [{"title": "synthetic", "paragraphs": paragraphs}]});
    std::fs::write(path, doc.to_string()).expect("squad");
}

/// CoNLL sentences: words w5..w8 are single-word `B-PER` entities, pairs w15 w16 a two-word
/// `B-LOC I-LOC`, everything else (w40..w60) `O`.
pub fn write_conll(path: &Path, sentences: usize, seed: u64) {
    let mut rng = Lcg(seed);
    let mut text = String::new();
    for _ in 0..sentences {
        for _ in 0..4 + rng.next(4) {
            match rng.next(4) {
                0 => text.push_str(&format!("w{}\tB-PER\n", 5 + rng.next(4))),
                1 => text.push_str("w15\tB-LOC\nw16\tI-LOC\n"),
                _ => text.push_str(&format!("w{}\tO\n", 40 + rng.next(21))),
            }
        }
        text.push('\n');
    }
    std::fs::write(path, text).expect("conll");
}
