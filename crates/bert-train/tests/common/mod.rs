//! Helpers shared by the CLI integration tests: paths, running the `bert` binary.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// all-MiniLM-L6-v2 (`BERT_MINILM_DIR`, else `.cache/models`), fetched by scripts/fetch_models.sh.
pub fn minilm_dir() -> PathBuf {
    let dir = std::env::var_os("BERT_MINILM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".cache/models/all-MiniLM-L6-v2"));
    assert!(
        dir.join("model.safetensors").is_file(),
        "all-MiniLM-L6-v2 not found in {}: run scripts/fetch_models.sh",
        dir.display()
    );
    dir
}

/// Runs the `bert` binary.
pub fn bert(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bert"))
        .args(args)
        .output()
        .expect("run bert")
}

/// Runs `bert`, asserts success, returns stdout + stderr.
pub fn ok(args: &[&str]) -> String {
    let out = bert(args);
    assert!(
        out.status.success(),
        "bert {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// Runs `bert`, asserts a failure with exactly one non-empty stderr line containing `needle`.
pub fn fails_in_one_line(args: &[&str], needle: &str) {
    let out = bert(args);
    assert!(!out.status.success(), "bert {args:?} should fail");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one-line error expected, got: {stderr}");
    assert!(lines[0].contains(needle), "{needle:?} not in: {stderr}");
}

/// All f32 tensors of a safetensors file.
pub fn read_tensors(path: &Path) -> BTreeMap<String, Vec<f32>> {
    let bytes = std::fs::read(path).expect("weights");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            let v = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            (name, v)
        })
        .collect()
}

/// The largest `|a - b|` between two sets of tensors of the same names (see [`read_tensors`]).
pub fn max_abs_diff(a: &BTreeMap<String, Vec<f32>>, b: &BTreeMap<String, Vec<f32>>) -> f32 {
    assert_eq!(a.len(), b.len(), "different tensor sets");
    let mut worst = 0.0f32;
    for (name, x) in a {
        for (p, q) in x.iter().zip(&b[name]) {
            worst = worst.max((p - q).abs());
        }
    }
    worst
}

/// Runs `run(name, override)` with two data-parallel replicas (`training.devices=[0, 0]`, the
/// one CPU device twice) and with one replica accumulating two micro-batches, and checks that
/// the final weights (see [`read_tensors`]) agree within 1e-6: a replica that skipped the
/// all-reduce, or averaged wrongly, ends ~1e-3 away.
pub fn assert_two_replicas_match_accumulation(
    run: impl Fn(&str, &str) -> BTreeMap<String, Vec<f32>>,
) {
    let ddp = run("ddp", "training.devices=[0, 0]");
    let acc = run("acc", "training.gradient_accumulation_steps=2");
    let worst = max_abs_diff(&ddp, &acc);
    assert!(
        worst < 1e-6,
        "2 replicas end {worst} away from accumulation over 2"
    );
}

/// `bert bench train --fixed-batch --json` on a tiny BERT (configs/bench/bert-mini.toml with
/// preset tiny, vocabulary 512, batch 4 × 32 tokens) with `extra` arguments: the JSON report,
/// or stderr when the run fails.
pub fn bench_train_tiny(extra: &[&str]) -> Result<serde_json::Value, String> {
    let config = root().join("configs/bench/bert-mini.toml");
    let mut args = vec![
        "bench",
        "train",
        "--config",
        config.to_str().expect("utf8"),
        "--set",
        "model.preset=tiny",
        "--set",
        "model.vocab_size=512",
        "--set",
        "data.max_seq_length=32",
        "--set",
        "training.batch_size=4",
        "--fixed-batch",
        "--json",
    ];
    args.extend_from_slice(extra);
    let out = bert(&args);
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or("")).map_err(|e| e.to_string())
}

/// A pretraining config for a very small model on the fixture corpus (6 steps, evaluation
/// every 3, checkpoints every 2), its output in `dir/out`, written to `dir/out.toml`.
pub fn pretrain_config(dir: &Path, out: &str) -> PathBuf {
    let minilm = std::env::var_os("BERT_MINILM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".cache/models/all-MiniLM-L6-v2"));
    let corpus = root().join("tests/fixtures/corpus");
    let path = dir.join(format!("{out}.toml"));
    std::fs::write(
        &path,
        format!(
            r#"[model]
preset = "tiny"
hidden_size = 32
num_attention_heads = 2
intermediate_size = 64
max_position_embeddings = 64

[data]
tokenizer = "{}"
train_files = ["{}/*.txt"]
valid_files = ["{}/moby.txt"]
prepared_dir = "{}/prepared"
max_seq_length = 64

[optimizer]
learning_rate = 1e-3

[schedule]
warmup_steps = 2

[training]
max_steps = 6
batch_size = 8
eval_every_steps = 3
eval_batches = 2
save_every_steps = 2
log_every_steps = 1

[output]
dir = "{}"
"#,
            minilm.display(),
            corpus.display(),
            corpus.display(),
            dir.display(),
            dir.join(out).display()
        ),
    )
    .expect("config");
    path
}

/// Rows of 4–6 words: "pos" rows use w5..w20, "neg" rows w40..w60; scores 1.0 and 0.0.
pub fn write_classification_data(dir: &Path, rows: usize, seed: u64, regression: bool) -> PathBuf {
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

/// A fine-tuning config `dir/name.toml`: sequence classification (or `regression`) from the tiny
/// masked-LM fixture on written data (48 training rows, 16 dev rows), output in `dir/name`.
pub fn classification_config(dir: &Path, name: &str, regression: bool) -> PathBuf {
    let train = write_classification_data(dir, 48, 1, regression);
    let dev = write_classification_data(dir, 16, 2, regression);
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
