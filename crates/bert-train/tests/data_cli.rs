//! `bert tokenizer train`, `bert data prepare` and `bert bench data` end to end on the small
//! public-domain fixture corpus (`tests/fixtures/corpus`, cut from scripts/fetch_corpus.py's
//! output).

mod common;
use common::*;

#[test]
fn train_tokenizer_prepare_and_bench_the_fixture_corpus() {
    let dir = tempfile::tempdir().expect("tempdir");
    let corpus = root().join("tests/fixtures/corpus");
    let sotu = corpus.join("sotu.txt");
    let moby = corpus.join("moby.txt");
    let tok = dir.path().join("tok");
    ok(&[
        "tokenizer",
        "train",
        "--input",
        sotu.to_str().expect("utf8"),
        moby.to_str().expect("utf8"),
        "--vocab-size",
        "600",
        "--output",
        tok.to_str().expect("utf8"),
    ]);
    for f in ["tokenizer.json", "vocab.txt", "tokenizer_config.json"] {
        assert!(tok.join(f).is_file(), "{f}");
    }
    // A config file names the corpus; flags are not needed.
    let prepared = dir.path().join("prepared");
    let config = dir.path().join("pretrain.toml");
    std::fs::write(
        &config,
        format!(
            "[model]\ninit_from = \"{}\"\n\n[data]\ntrain_files = [\"{}/*.txt\"]\nvalid_files = [\"{}\"]\nprepared_dir = \"{}\"\nmax_seq_length = 64\n",
            tok.display(),
            corpus.display(),
            moby.display(),
            prepared.display()
        ),
    )
    .expect("config");
    let log = ok(&[
        "data",
        "prepare",
        "--config",
        config.to_str().expect("utf8"),
    ]);
    assert!(log.contains("train: 2 shards written"), "{log}");
    assert!(
        prepared.join("train/index.json").is_file() && prepared.join("valid/index.json").is_file()
    );
    let log = ok(&[
        "data",
        "prepare",
        "--config",
        config.to_str().expect("utf8"),
    ]);
    assert!(
        log.contains("0 shards written, 2 unchanged"),
        "incremental: {log}"
    );
    // Another tokenizer is refused.
    let other = dir.path().join("other");
    ok(&[
        "tokenizer",
        "train",
        "--input",
        sotu.to_str().expect("utf8"),
        "--vocab-size",
        "500",
        "--output",
        other.to_str().expect("utf8"),
    ]);
    let out = bert(&[
        "data",
        "prepare",
        "--config",
        config.to_str().expect("utf8"),
        "--tokenizer",
        other.to_str().expect("utf8"),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("another tokenizer"));
    // The benchmark reports both throughputs as JSON.
    let json = ok(&[
        "bench",
        "data",
        "--input",
        sotu.to_str().expect("utf8"),
        "--tokenizer",
        tok.to_str().expect("utf8"),
        "--seconds",
        "0.5",
        "--json",
    ]);
    let line = json
        .lines()
        .find(|l| l.starts_with('{'))
        .expect("json line");
    let v: serde_json::Value = serde_json::from_str(line).expect("json");
    assert!(v["prepare_mb_per_s"].as_f64().expect("mb/s") > 0.0);
    assert!(
        v["stream_tokens_per_s_one_core"]
            .as_f64()
            .expect("tokens/s")
            > 0.0
    );
}

#[test]
fn data_errors_are_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("bad.toml");
    std::fs::write(
        &config,
        "[data]\ntrain_files = [\"x.txt\"]\nmlm_prob = 0.2\n",
    )
    .expect("write");
    let out = bert(&[
        "data",
        "prepare",
        "--config",
        config.to_str().expect("utf8"),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("mlm_prob") && err.contains("bad.toml"),
        "{err}"
    );
    let out = bert(&[
        "data",
        "prepare",
        "--input",
        "/no/such.txt",
        "--tokenizer",
        "/no/tok",
        "--output",
        dir.path().to_str().expect("utf8"),
    ]);
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim().lines().count(),
        1
    );
}
