//! The `bert` binary end to end: `encode` on real weights (all-MiniLM-L6-v2) and on every head
//! of the tiny random BERT, compared with transformers' outputs; `tokenize`; one-line errors.

mod common;
#[path = "common/encode.rs"]
mod encode;
use common::*;
use encode::*;

use std::path::Path;

#[test]
fn encode_minilm_matches_transformers_on_real_tokens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out.safetensors");
    let model = minilm_dir();
    let input = root().join("tests/fixtures/minilm/inputs.jsonl");
    ok(&[
        "encode",
        "--model",
        model.to_str().expect("utf8"),
        "--input",
        input.to_str().expect("utf8"),
        "--output",
        out.to_str().expect("utf8"),
        "--batch-size",
        "4",
    ]);
    let ours = Tensors::open(&out);
    let reference = Tensors::open(&root().join("tests/fixtures/minilm/reference.safetensors"));
    for name in ["input_ids", "token_type_ids", "attention_mask"] {
        assert_eq!(ours.get(name), reference.get(name), "{name}");
    }
    let (shape, mask) = reference.get("attention_mask");
    // Sentences and pairs of different lengths share one padded batch.
    assert!(mask.contains(&0.0) && shape[0] == 6);
    let (hshape, hidden) = ours.get("last_hidden_state");
    let width = hshape[2];
    let keep: Vec<bool> = mask
        .iter()
        .flat_map(|&m| std::iter::repeat_n(m == 1.0, width))
        .collect();
    let d = max_diff(&hidden, &reference.get("last_hidden_state").1, Some(&keep));
    assert!(d < 1e-4, "last_hidden_state differs by {d}");
    for name in ["mean_pooled", "pooler_output"] {
        let d = max_diff(&ours.get(name).1, &reference.get(name).1, None);
        assert!(d < 1e-4, "{name} differs by {d}");
    }
    assert!(!ours.has("hidden_states"), "only with --hidden-states");
}

#[test]
fn encode_every_head_matches_transformers() {
    encode_every_head_matches_transformers_on("cpu", |args| {
        ok(args);
        Ok(())
    })
    .expect("cpu");
}

#[test]
fn tokenize_writes_every_field_and_truncates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.jsonl");
    let out = dir.path().join("out.jsonl");
    std::fs::write(
        &input,
        "{\"text\": \"Héllo wörld, this sentence is long enough to be cut.\", \"text_pair\": \"Yes 🍕\"}\n{\"text\": \"北京\"}\n",
    )
    .expect("write");
    let model = minilm_dir();
    ok(&[
        "tokenize",
        "--model",
        model.to_str().expect("utf8"),
        "--input",
        input.to_str().expect("utf8"),
        "--output",
        out.to_str().expect("utf8"),
        "--max-length",
        "10",
    ]);
    let text = std::fs::read_to_string(&out).expect("output");
    let rows: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(rows.len(), 2);
    for key in [
        "tokens",
        "input_ids",
        "token_type_ids",
        "attention_mask",
        "special_tokens_mask",
        "word_ids",
        "offsets",
    ] {
        assert!(rows[0].get(key).is_some(), "missing {key}");
    }
    assert_eq!(rows[0]["input_ids"].as_array().expect("ids").len(), 10);
    assert_eq!(rows[0]["tokens"][1], "hello");
    assert_eq!(
        rows[1]["tokens"],
        serde_json::json!(["[CLS]", "北", "京", "[SEP]"])
    );
    assert_eq!(rows[1]["offsets"][1], serde_json::json!([0, 1]));
    assert_eq!(rows[1]["word_ids"], serde_json::json!([null, 0, 1, null]));
}

#[test]
fn bad_inputs_fail_with_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = minilm_dir();
    let model = model.to_str().expect("utf8");
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"text\": \"fine\"}\n{\"text\": \"also fine\"}\n{\"txet\": 1}\n",
    )
    .expect("write");
    let bad = bad.to_str().expect("utf8");
    let out = dir.path().join("o.safetensors");
    let out = out.to_str().expect("utf8");
    fails_in_one_line(
        &[
            "encode",
            "--model",
            "/no/such/model",
            "--input",
            bad,
            "--output",
            out,
        ],
        "model directory /no/such/model does not exist",
    );
    fails_in_one_line(
        &["encode", "--model", model, "--input", bad, "--output", out],
        "bad.jsonl:3",
    );
    fails_in_one_line(
        &[
            "tokenize", "--model", model, "--input", bad, "--output", out,
        ],
        "bad.jsonl:3",
    );
    let ids = dir.path().join("ids.jsonl");
    std::fs::write(&ids, "{\"input_ids\": [101, 999999, 102]}\n").expect("write");
    fails_in_one_line(
        &[
            "encode",
            "--model",
            model,
            "--input",
            ids.to_str().expect("utf8"),
            "--output",
            out,
        ],
        "outside the vocabulary",
    );
    let long = dir.path().join("long.jsonl");
    std::fs::write(
        &long,
        format!("{{\"text\": \"{}\"}}\n", "word ".repeat(600)),
    )
    .expect("write");
    fails_in_one_line(
        &[
            "encode",
            "--model",
            model,
            "--input",
            long.to_str().expect("utf8"),
            "--output",
            out,
        ],
        "--max-length",
    );
    if !cfg!(feature = "cuda") {
        let good = root().join("tests/fixtures/minilm/inputs.jsonl");
        let good = good.to_str().expect("utf8");
        fails_in_one_line(
            &[
                "encode",
                "--model",
                model,
                "--input",
                good,
                "--output",
                out,
                "--backend",
                "cuda",
            ],
            "not compiled",
        );
    }
    assert!(!Path::new(out).exists(), "no output is written on failure");
}

#[test]
fn convert_writes_hf_layout_that_loads_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The pickle checkpoint becomes safetensors with the same outputs.
    let fixture = root().join("tests/fixtures/tiny-bert/BertForSequenceClassification");
    let converted = dir.path().join("seqcls");
    ok(&[
        "convert",
        "--model",
        fixture.to_str().expect("utf8"),
        "--output",
        converted.to_str().expect("utf8"),
    ]);
    assert!(converted.join("model.safetensors").is_file());
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(converted.join("config.json")).expect("config"),
    )
    .expect("json");
    assert_eq!(config["architectures"][0], "BertForSequenceClassification");
    assert_eq!(config["id2label"]["2"], "pos");
    let reference = Tensors::open(&fixture.join("reference.safetensors"));
    let input = dir.path().join("in.jsonl");
    let out = dir.path().join("out.safetensors");
    pretokenized_inputs(&reference, &input);
    ok(&[
        "encode",
        "--model",
        converted.to_str().expect("utf8"),
        "--input",
        input.to_str().expect("utf8"),
        "--output",
        out.to_str().expect("utf8"),
    ]);
    let d = max_diff(
        &Tensors::open(&out).get("seqcls_logits").1,
        &reference.get("seqcls_logits").1,
        None,
    );
    assert!(d < 1e-4, "seqcls_logits differ by {d} after conversion");

    // Multiple choice keeps its classifier; MiniLM keeps its tokenizer files.
    let mc = dir.path().join("mc");
    let mc_fixture = root().join("tests/fixtures/tiny-bert/BertForMultipleChoice");
    ok(&[
        "convert",
        "--model",
        mc_fixture.to_str().expect("utf8"),
        "--output",
        mc.to_str().expect("utf8"),
    ]);
    assert!(Tensors::open(&mc.join("model.safetensors")).has("classifier.weight"));
    let minilm = dir.path().join("minilm");
    ok(&[
        "convert",
        "--model",
        minilm_dir().to_str().expect("utf8"),
        "--output",
        minilm.to_str().expect("utf8"),
    ]);
    for f in [
        "tokenizer.json",
        "vocab.txt",
        "tokenizer_config.json",
        "config.json",
    ] {
        assert!(minilm.join(f).is_file(), "{f}");
    }

    // A head we cannot represent is refused rather than dropped.
    let odd = dir.path().join("odd");
    std::fs::create_dir_all(&odd).expect("mkdir");
    std::fs::copy(
        fixture.join("pytorch_model.bin"),
        odd.join("pytorch_model.bin"),
    )
    .expect("copy");
    let text = std::fs::read_to_string(fixture.join("config.json")).expect("config");
    std::fs::write(
        odd.join("config.json"),
        text.replace(
            "BertForSequenceClassification",
            "BertForNextSentencePrediction",
        ),
    )
    .expect("write");
    fails_in_one_line(
        &[
            "convert",
            "--model",
            odd.to_str().expect("utf8"),
            "--output",
            dir.path().join("never").to_str().expect("utf8"),
        ],
        "BertForNextSentencePrediction is not supported",
    );
}

#[test]
fn fill_mask_matches_the_transformers_pipeline() {
    let fixture = root().join("tests/fixtures/tiny-bert");
    let cases: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture.join("fill_mask.json")).expect("fixture"),
    )
    .expect("json");
    let model = fixture.join("BertForMaskedLM");
    for case in cases.as_array().expect("cases") {
        let text = case["text"].as_str().expect("text");
        let out = bert(&[
            "fill-mask",
            "--model",
            model.to_str().expect("utf8"),
            text,
            "--top-k",
            "5",
            "--json",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ours: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json output");
        let expected = case["masks"].as_array().expect("masks");
        assert_eq!(
            ours.as_array().expect("list").len(),
            expected.len(),
            "{text}"
        );
        for (mine, theirs) in ours.as_array().expect("list").iter().zip(expected) {
            for (a, b) in mine
                .as_array()
                .expect("top-k")
                .iter()
                .zip(theirs.as_array().expect("top-k"))
            {
                assert_eq!(a["token"], b["token"], "{text}");
                let d = (a["score"].as_f64().expect("score") - b["score"].as_f64().expect("score"))
                    .abs();
                assert!(d < 1e-5, "{text}: score differs by {d}");
            }
        }
    }
    fails_in_one_line(
        &[
            "fill-mask",
            "--model",
            model.to_str().expect("utf8"),
            "no mask here",
        ],
        "no [MASK]",
    );
    let base = fixture.join("BertModel");
    fails_in_one_line(
        &[
            "fill-mask",
            "--model",
            base.to_str().expect("utf8"),
            "w5 [MASK]",
        ],
        "neither tokenizer.json nor vocab.txt",
    );
}

/// A `BertModel` saved without its pooler (`add_pooling_layer=False`) encodes like the full
/// one and writes no `pooler_output`.
#[test]
fn encode_a_bert_model_without_pooler() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fixture = root().join("tests/fixtures/tiny-bert/BertModel");
    let bare = dir.path().join("bare");
    std::fs::create_dir_all(&bare).expect("dir");
    std::fs::copy(fixture.join("config.json"), bare.join("config.json")).expect("config");
    let bytes = std::fs::read(fixture.join("model.safetensors")).expect("weights");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    let kept: Vec<_> = st
        .tensors()
        .into_iter()
        .filter(|(name, _)| !name.starts_with("pooler."))
        .collect();
    std::fs::write(
        bare.join("model.safetensors"),
        safetensors::serialize(kept, None).expect("serialize"),
    )
    .expect("write");
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "{\"input_ids\": [2, 7, 9, 11, 3]}\n").expect("input");
    let encode = |model: &Path, name: &str| {
        let out = dir.path().join(name);
        ok(&[
            "encode",
            "--model",
            model.to_str().expect("utf8"),
            "--input",
            input.to_str().expect("utf8"),
            "--output",
            out.to_str().expect("utf8"),
        ]);
        Tensors::open(&out)
    };
    let (full, without) = (
        encode(&fixture, "full.safetensors"),
        encode(&bare, "bare.safetensors"),
    );
    assert!(full.has("pooler_output") && !without.has("pooler_output"));
    assert_eq!(
        full.get("last_hidden_state"),
        without.get("last_hidden_state")
    );
    assert_eq!(full.get("mean_pooled"), without.get("mean_pooled"));
}

/// `bench encode` loads strictly: a checkpoint missing a tensor is an error naming it, not a
/// benchmark of random weights.
#[test]
fn bench_encode_refuses_an_incomplete_checkpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fixture = root().join("tests/fixtures/tiny-bert/BertModel");
    std::fs::copy(fixture.join("config.json"), dir.path().join("config.json")).expect("config");
    let bytes = std::fs::read(fixture.join("model.safetensors")).expect("weights");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    let missing = "encoder.layer.0.output.dense.weight";
    let kept: Vec<_> = st
        .tensors()
        .into_iter()
        .filter(|(n, _)| n != missing)
        .collect();
    std::fs::write(
        dir.path().join("model.safetensors"),
        safetensors::serialize(kept, None).expect("serialize"),
    )
    .expect("write");
    fails_in_one_line(
        &[
            "bench",
            "encode",
            "--model",
            dir.path().to_str().expect("utf8"),
            "--sentences",
            "4",
        ],
        "output.dense.weight",
    );
}
