//! `bert finetune` (sequence classification and regression) end to end on the tiny MLM fixture
//! (it has a vocabulary of `w5`…`w63`) and a separable synthetic task.

mod common;
use common::*;

use std::path::{Path, PathBuf};

/// Rows of 4–6 words: "pos" rows use w5..w20, "neg" rows w40..w60; scores 1.0 and 0.0.
fn write_data(dir: &Path, rows: usize, seed: u64, regression: bool) -> PathBuf {
    let mut text = String::from("text\tlabel\n");
    let mut x = seed;
    let mut next = |n: u64| {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (x >> 33) % n
    };
    for i in 0..rows {
        let positive = i % 2 == 0;
        let len = 4 + next(3);
        let words: Vec<String> = (0..len)
            .map(|_| {
                format!(
                    "w{}",
                    if positive {
                        5 + next(16)
                    } else {
                        40 + next(21)
                    }
                )
            })
            .collect();
        let label = match (regression, positive) {
            (true, true) => "1.0",
            (true, false) => "0.0",
            (false, true) => "pos",
            (false, false) => "neg",
        };
        text.push_str(&format!("{}\t{label}\n", words.join(" ")));
    }
    let path = dir.join(format!("data-{seed}-{regression}.tsv"));
    std::fs::write(&path, text).expect("data");
    path
}

fn config(dir: &Path, name: &str, regression: bool) -> PathBuf {
    let train = write_data(dir, 48, 1, regression);
    let dev = write_data(dir, 16, 2, regression);
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "[model]\ninit_from = \"{}\"\n\n[task]\nkind = \"sequence-classification\"\ntrain_file = \"{}\"\nvalid_file = \"{}\"\nregression = {regression}\nmax_length = 16\n\n[optimizer]\nlearning_rate = {}\n\n[schedule]\nwarmup_ratio = 0.1\n\n[training]\nepochs = 15\nbatch_size = 8\nlog_every_steps = 6\n\n[output]\ndir = \"{}\"\n",
            root().join("tests/fixtures/tiny-bert/BertForMaskedLM").display(),
            train.display(),
            dev.display(),
            if regression { "1e-3" } else { "5e-4" },
            dir.join(name).display()
        ),
    )
    .expect("config");
    path
}

#[test]
fn classification_learns_a_separable_task_and_writes_eval_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path(), "cls", false);
    let out = bert(&["finetune", "--config", cfg.to_str().expect("utf8")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let eval: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("cls/eval.json")).expect("eval.json"),
    )
    .expect("json");
    let accuracy = eval["accuracy"].as_f64().expect("accuracy");
    assert!(accuracy >= 0.9, "dev accuracy {accuracy}");
    assert!(eval["f1"].as_f64().expect("f1") >= 0.9);
    // final/ is an HF classifier with the label names, usable by `bert encode`.
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("cls/final/config.json")).expect("config"),
    )
    .expect("json");
    assert_eq!(config["architectures"][0], "BertForSequenceClassification");
    assert_eq!(config["id2label"]["0"], "neg");
    assert!(dir.path().join("cls/final/vocab.txt").is_file());
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "{\"text\": \"w5 w6 w7 w8\"}\n").expect("input");
    let o = bert(&[
        "encode",
        "--model",
        dir.path().join("cls/final").to_str().expect("utf8"),
        "--input",
        input.to_str().expect("utf8"),
        "--output",
        dir.path().join("o.safetensors").to_str().expect("utf8"),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn regression_reports_correlations() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path(), "reg", true);
    let out = bert(&["finetune", "--config", cfg.to_str().expect("utf8")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let eval: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("reg/eval.json")).expect("eval.json"),
    )
    .expect("json");
    assert!(eval["pearson"].as_f64().expect("pearson") > 0.7, "{eval}");
    assert!(eval["spearman"].as_f64().is_some());
}

#[test]
fn unsupported_task_kinds_and_bad_labels_are_clear() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path(), "bad", false);
    let out = bert(&[
        "finetune",
        "--config",
        cfg.to_str().expect("utf8"),
        "--set",
        "task.kind=question-answering",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not supported yet"));
    let out = bert(&[
        "finetune",
        "--config",
        cfg.to_str().expect("utf8"),
        "--set",
        "task.labels=[\"a\", \"b\"]",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown label") && err.contains(":2"), "{err}");
}
