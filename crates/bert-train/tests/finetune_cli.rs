//! `bert finetune` (sequence classification and regression) end to end on the tiny MLM fixture
//! (it has a vocabulary of `w5`…`w63`) and a separable synthetic task.

mod common;
#[path = "common/tasks.rs"]
mod tasks;
use common::*;
use tasks::*;

use std::path::Path;

#[test]
fn classification_learns_a_separable_task_and_writes_eval_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = classification_config(dir.path(), "cls", false);
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
    let cfg = classification_config(dir.path(), "reg", true);
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
fn bad_task_kinds_and_bad_labels_are_clear() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = classification_config(dir.path(), "bad", false);
    let cfg = cfg.to_str().expect("utf8");
    fails_in_one_line(
        &[
            "finetune",
            "--config",
            cfg,
            "--set",
            "task.kind=translation",
        ],
        "unknown variant",
    );
    let out = bert(&[
        "finetune",
        "--config",
        cfg,
        "--set",
        "task.labels=[\"a\", \"b\"]",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown label") && err.contains(":2"), "{err}");
    // A diverging run stops at the first non-finite loss or gradient norm, keeps the last
    // checkpoint written before it and exports nothing.
    let out = bert(&[
        "finetune",
        "--config",
        cfg,
        "--set",
        "optimizer.learning_rate=1e30",
        "--set",
        "optimizer.max_grad_norm=0",
        "--set",
        "training.save_every_steps=1",
    ]);
    assert!(!out.status.success(), "a diverging run must stop");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("stopping; the last good checkpoint (step ") && !err.contains("panicked"),
        "{err}"
    );
    let run = dir.path().join("bad");
    assert!(!run.join("final").exists(), "nothing exported");
    let last = std::fs::read_dir(run.join("checkpoints"))
        .expect("checkpoints")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("step-"))
        .max()
        .expect("a checkpoint");
    let weights = read_tensors(&run.join("checkpoints").join(last).join("model.safetensors"));
    assert!(
        weights.values().flatten().all(|v| v.is_finite()),
        "the kept checkpoint is finite"
    );
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(
        &std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .expect("json")
}

#[test]
fn token_classification_learns_entities_and_predicts_spans() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (train, dev) = (dir.path().join("train.conll"), dir.path().join("dev.conll"));
    write_conll(&train, 64, 1);
    write_conll(&dev, 16, 2);
    let cfg = task_config(
        dir.path(),
        "ner",
        "token-classification",
        (&train, &dev),
        "max_length = 24",
        "epochs = 24\nbatch_size = 8\neval_every_steps = 48",
    );
    ok(&["finetune", "--config", cfg.to_str().expect("utf8")]);
    let eval = read_json(&dir.path().join("ner/eval.json"));
    assert!(eval["f1"].as_f64().expect("f1") > 0.8, "{eval}");
    assert!(eval["per_type_f1"]["LOC"].as_f64().is_some(), "{eval}");
    let config = read_json(&dir.path().join("ner/final/config.json"));
    assert_eq!(config["architectures"][0], "BertForTokenClassification");
    assert_eq!(config["id2label"]["0"], "O");
    for f in [
        "loss.png",
        "metrics.jsonl",
        "best/model.safetensors",
        "best/eval.json",
    ] {
        assert!(dir.path().join("ner").join(f).is_file(), "{f}");
    }
    // `bert evaluate` of final/ reproduces eval.json.
    let model = dir.path().join("ner/final");
    let out_json = dir.path().join("evaluate.json");
    ok(&[
        "evaluate",
        "--model",
        model.to_str().expect("utf8"),
        "--config",
        cfg.to_str().expect("utf8"),
        "--output",
        out_json.to_str().expect("utf8"),
    ]);
    let again = read_json(&out_json);
    assert!((again["f1"].as_f64().expect("f1") - eval["f1"].as_f64().expect("f1")).abs() < 1e-9);
    // `bert predict`: character spans on raw text, word spans on tokens.
    let lines = predict(
        dir.path(),
        &model,
        "{\"text\": \"w40 w7 w41 w15 w16\"}\n{\"tokens\": [\"w8\", \"w50\"]}\n",
    );
    let first = &lines[0]["entities"];
    assert_eq!(first[0]["entity"], "PER", "{first}");
    assert_eq!(
        (first[0]["start"].as_u64(), first[0]["end"].as_u64()),
        (Some(4), Some(6))
    );
    assert_eq!(first[0]["text"], "w7");
    assert_eq!(first[1]["entity"], "LOC", "{first}");
    assert_eq!(first[1]["text"], "w15 w16");
    assert_eq!(lines[1]["entities"][0]["start_word"], 0);
    assert_eq!(lines[1]["tags"], serde_json::json!(["B-PER", "O"]));
}

#[test]
fn question_answering_finds_the_span_across_windows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (train, dev) = (dir.path().join("train.json"), dir.path().join("dev.json"));
    write_squad(&train, 96, 3);
    write_squad(&dev, 24, 4);
    // 12-token windows over 6–9 word contexts: long contexts make two windows.
    let cfg = task_config(
        dir.path(),
        "qa",
        "question-answering",
        (&train, &dev),
        "max_length = 12\ndoc_stride = 4",
        "epochs = 20\nbatch_size = 8",
    );
    let log = ok(&["finetune", "--config", cfg.to_str().expect("utf8")]);
    assert!(log.contains("training windows"), "{log}");
    let eval = read_json(&dir.path().join("qa/eval.json"));
    assert!(
        eval["features"].as_u64().expect("features") > 24,
        "several windows per question: {eval}"
    );
    assert!(eval["exact_match"].as_f64().expect("em") > 80.0, "{eval}");
    assert!(eval["f1"].as_f64().expect("f1") >= eval["exact_match"].as_f64().expect("em"));
    let answer = predict(
        dir.path(),
        &dir.path().join("qa/final"),
        "{\"question\": \"w61 w62\", \"context\": \"w41 w42 w9 w43\"}\n",
    )
    .remove(0);
    assert_eq!(answer["answer"], "w9", "{answer}");
    assert_eq!(
        (answer["start"].as_u64(), answer["end"].as_u64()),
        (Some(8), Some(10))
    );
    let p = answer["score"].as_f64().expect("score");
    assert!(p > 0.0 && p <= 1.0, "{answer}");
    // --top-k 3: the best answer first, then distinct spans with falling scores.
    let (input, output) = (dir.path().join("in.jsonl"), dir.path().join("top.jsonl"));
    ok(&[
        "predict",
        "--model",
        dir.path().join("qa/final").to_str().expect("utf8"),
        "--input",
        input.to_str().expect("utf8"),
        "--output",
        output.to_str().expect("utf8"),
        "--top-k",
        "3",
    ]);
    let top: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(&output).expect("out").trim()).expect("json");
    let list = top["top_k"].as_array().expect("top_k list");
    assert_eq!(list.len(), 3, "{top}");
    assert_eq!(list[0], answer, "{top}");
    let spans: std::collections::BTreeSet<(u64, u64)> = list
        .iter()
        .map(|a| {
            (
                a["start"].as_u64().expect("s"),
                a["end"].as_u64().expect("e"),
            )
        })
        .collect();
    assert_eq!(spans.len(), 3, "distinct spans: {top}");
    let scores: Vec<f64> = list
        .iter()
        .map(|a| a["score"].as_f64().expect("p"))
        .collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{top}");
}

#[test]
fn multiple_choice_learns_and_a_killed_run_resumes_to_the_same_weights() {
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |path: &Path, n: usize, seed: u64| {
        let mut rng = Lcg(seed);
        let mut text = String::new();
        for _ in 0..n {
            let right = format!("w{} w{}", 5 + rng.next(16), 5 + rng.next(16));
            let wrong = format!("w{} w{}", 40 + rng.next(21), 40 + rng.next(21));
            let label = rng.next(2);
            let choices = if label == 0 {
                [right, wrong]
            } else {
                [wrong, right]
            };
            text.push_str(
                &serde_json::json!({"context": "w61 w62", "choices": choices, "label": label})
                    .to_string(),
            );
            text.push('\n');
        }
        std::fs::write(path, text).expect("mc");
    };
    let (train, dev) = (dir.path().join("train.jsonl"), dir.path().join("dev.jsonl"));
    write(&train, 48, 5);
    write(&dev, 16, 6);
    let full = task_config(
        dir.path(),
        "mc",
        "multiple-choice",
        (&train, &dev),
        "max_length = 16",
        "epochs = 6\nsave_every_steps = 9\ngradient_accumulation_steps = 2\nbatch_size = 4",
    );
    ok(&["finetune", "--config", full.to_str().expect("utf8")]);
    let eval = read_json(&dir.path().join("mc/eval.json"));
    assert!(
        eval["accuracy"].as_f64().expect("accuracy") >= 0.9,
        "{eval}"
    );
    // The same run stopped at step 9 (as Ctrl-C would) and resumed ends with the same weights.
    let split = task_config(
        dir.path(),
        "mc-split",
        "multiple-choice",
        (&train, &dev),
        "max_length = 16",
        "epochs = 6\nsave_every_steps = 9\ngradient_accumulation_steps = 2\nbatch_size = 4\nstop_after_steps = 9",
    );
    let log = ok(&["finetune", "--config", split.to_str().expect("utf8")]);
    assert!(log.contains("continue with --resume"), "{log}");
    assert!(!dir.path().join("mc-split/final").exists());
    fails_in_one_line(
        &["finetune", "--config", split.to_str().expect("utf8")],
        "--resume",
    );
    ok(&[
        "finetune",
        "--config",
        split.to_str().expect("utf8"),
        "--resume",
        "--set",
        "training.stop_after_steps=1000",
    ]);
    let a = read_tensors(&dir.path().join("mc/final/model.safetensors"));
    let b = read_tensors(&dir.path().join("mc-split/final/model.safetensors"));
    assert_eq!(a.len(), b.len());
    for (name, x) in &a {
        let y = &b[name];
        let diff = x
            .iter()
            .zip(y)
            .map(|(p, q)| (p - q).abs())
            .fold(0f32, f32::max);
        assert!(diff <= 1e-6, "{name}: {diff}");
    }
    let p = predict(
        dir.path(),
        &dir.path().join("mc/final"),
        "{\"context\": \"w61 w62\", \"choices\": [\"w50 w51\", \"w6 w7\"]}\n",
    )
    .remove(0);
    assert_eq!(p["label"], 1, "{p}");
    assert_eq!(p["choice"], "w6 w7");
}

/// Runs `bert predict` with `model` over the JSONL `input`; the output lines.
fn predict(dir: &Path, model: &Path, input: &str) -> Vec<serde_json::Value> {
    let (input_path, output) = (dir.join("in.jsonl"), dir.join("out.jsonl"));
    std::fs::write(&input_path, input).expect("input");
    ok(&[
        "predict",
        "--model",
        model.to_str().expect("utf8"),
        "--input",
        input_path.to_str().expect("utf8"),
        "--output",
        output.to_str().expect("utf8"),
    ]);
    std::fs::read_to_string(&output)
        .expect("out")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect()
}

#[test]
fn predict_and_evaluate_errors_are_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mlm = root().join("tests/fixtures/tiny-bert/BertForMaskedLM");
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "{\"text\": \"w5\"}\n").expect("input");
    let out = dir.path().join("out.jsonl");
    fails_in_one_line(
        &[
            "predict",
            "--model",
            mlm.to_str().expect("utf8"),
            "--input",
            input.to_str().expect("utf8"),
            "--output",
            out.to_str().expect("utf8"),
        ],
        "no task head",
    );
    // The tiny classifier with the MLM fixture's vocabulary (same ids).
    let cls = dir.path().join("cls");
    std::fs::create_dir_all(&cls).expect("dir");
    let fixtures = root().join("tests/fixtures/tiny-bert");
    for entry in std::fs::read_dir(fixtures.join("BertForSequenceClassification")).expect("fixture")
    {
        let path = entry.expect("entry").path();
        std::fs::copy(&path, cls.join(path.file_name().expect("name"))).expect("copy");
    }
    for file in ["vocab.txt", "tokenizer_config.json"] {
        std::fs::copy(fixtures.join("BertForMaskedLM").join(file), cls.join(file)).expect("copy");
    }
    std::fs::write(&input, "{\"text\": \"w5\"}\nnot json\n").expect("input");
    fails_in_one_line(
        &[
            "predict",
            "--model",
            cls.to_str().expect("utf8"),
            "--input",
            input.to_str().expect("utf8"),
            "--output",
            out.to_str().expect("utf8"),
        ],
        "in.jsonl:2",
    );
    std::fs::write(&input, "{\"txt\": \"w5\"}\n").expect("input");
    fails_in_one_line(
        &[
            "predict",
            "--model",
            cls.to_str().expect("utf8"),
            "--input",
            input.to_str().expect("utf8"),
            "--output",
            out.to_str().expect("utf8"),
        ],
        "missing string field \"text\"",
    );
    let cfg = classification_config(dir.path(), "x", false);
    fails_in_one_line(
        &[
            "evaluate",
            "--model",
            cls.to_str().expect("utf8"),
            "--config",
            cfg.to_str().expect("utf8"),
            "--set",
            "task.kind=token-classification",
        ],
        "needs a BertForTokenClassification",
    );
}

/// Every task head (regression, token classification, QA, multiple choice) trains in bf16 mixed
/// precision (f32 master weights; the losses, QA's padding bias and the regression target meet
/// the half-precision logits in f32) and evaluates.
#[test]
fn every_task_head_trains_in_bf16() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bf16 = [
        "--set",
        "training.precision=\"bf16\"",
        "--set",
        "training.epochs=2",
    ];
    let run = |cfg: &Path, name: &str| -> serde_json::Value {
        let mut args = vec!["finetune", "--config", cfg.to_str().expect("utf8")];
        args.extend(bf16);
        ok(&args);
        let metrics =
            std::fs::read_to_string(dir.path().join(name).join("metrics.jsonl")).expect("metrics");
        let train: Vec<serde_json::Value> = metrics
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json"))
            .filter(|l| l["split"] == "train")
            .collect();
        assert!(!train.is_empty());
        // Every step computed in bf16, not silently in f32.
        assert!(
            train.iter().all(|l| l["compute_dtype"] == "bf16"),
            "{metrics}"
        );
        read_json(&dir.path().join(name).join("eval.json"))
    };
    let reg = run(&classification_config(dir.path(), "reg", true), "reg");
    assert!(
        reg["pearson"].as_f64().expect("pearson").is_finite(),
        "{reg}"
    );

    let (train, dev) = (dir.path().join("train.conll"), dir.path().join("dev.conll"));
    write_conll(&train, 16, 1);
    write_conll(&dev, 8, 2);
    let ner = task_config(
        dir.path(),
        "ner",
        "token-classification",
        (&train, &dev),
        "max_length = 24",
        "batch_size = 8",
    );
    assert!(run(&ner, "ner")["f1"].as_f64().is_some());

    let (train, dev) = (dir.path().join("train.json"), dir.path().join("dev.json"));
    write_squad(&train, 16, 3);
    write_squad(&dev, 8, 4);
    let qa = task_config(
        dir.path(),
        "qa",
        "question-answering",
        (&train, &dev),
        "max_length = 12\ndoc_stride = 4",
        "batch_size = 8",
    );
    assert!(run(&qa, "qa")["exact_match"].as_f64().is_some());

    let (train, dev) = (dir.path().join("train.jsonl"), dir.path().join("dev.jsonl"));
    let line =
        serde_json::json!({"context": "w61 w62", "choices": ["w5 w6", "w41 w42"], "label": 0});
    std::fs::write(&train, format!("{line}\n").repeat(8)).expect("mc");
    std::fs::write(&dev, format!("{line}\n").repeat(4)).expect("mc");
    let mc = task_config(
        dir.path(),
        "mc",
        "multiple-choice",
        (&train, &dev),
        "max_length = 12",
        "batch_size = 4",
    );
    assert!(run(&mc, "mc")["accuracy"].as_f64().is_some());
}

/// Data-parallel fine-tuning: two replicas sharing the CPU end with the weights of one
/// replica accumulating two micro-batches (dropout off), also when the last step leaves the
/// second replica without data (3 batches a epoch, 3 epochs: 9 micro-batches, 5 steps).
#[test]
fn two_replicas_match_gradient_accumulation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = classification_config(dir.path(), "base", false);
    let run = |name: &str, extra: &str| -> std::collections::BTreeMap<String, Vec<f32>> {
        let out = dir.path().join(name);
        ok(&[
            "finetune",
            "--config",
            cfg.to_str().expect("utf8"),
            "--set",
            &format!("output.dir={:?}", out.display().to_string()),
            "--set",
            "training.epochs=3",
            "--set",
            "training.batch_size=16",
            "--set",
            "model.hidden_dropout_prob=0.0",
            "--set",
            "model.attention_probs_dropout_prob=0.0",
            "--set",
            extra,
        ]);
        let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).expect("metrics");
        let last_train = metrics
            .lines()
            .rfind(|l| l.contains("\"train\""))
            .expect("a train line");
        assert!(last_train.contains("\"step\":5"), "{last_train}");
        read_tensors(&out.join("final/model.safetensors"))
    };
    assert_two_replicas_match_accumulation(run);
    fails_in_one_line(
        &[
            "finetune",
            "--config",
            cfg.to_str().expect("utf8"),
            "--set",
            "training.devices=[3]",
        ],
        "no device 3",
    );
}

/// `task.max_length` beyond the model's position table is cut to it (with a warning), as
/// transformers caps at the model's maximum, instead of reading past the table.
#[test]
fn max_length_beyond_the_position_table_is_capped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = classification_config(dir.path(), "cap", false);
    let (config, _) = bert_train::config::load::<bert_train::config::FinetuneConfig>(
        &cfg,
        &["task.max_length=100000".into()],
    )
    .expect("config");
    let setup = bert_train::finetune::Setup::new(config, None).expect("setup");
    let positions = setup.bert_config.max_position_embeddings;
    assert!(positions < 100000);
    assert_eq!(setup.config.task.max_length(), positions);
    let long = vec!["word"; 4 * positions].join(" ");
    let enc = setup.truncating.encode(&long, None).expect("encode");
    assert_eq!(enc.input_ids.len(), positions);
}

/// A tokenizer that gives ids the model has no embedding for (a vocabulary longer than the
/// model's `vocab_size`) fails on the first example that has one, naming its file and line.
#[test]
fn token_ids_beyond_the_vocabulary_fail_at_their_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = dir.path().join("model");
    std::fs::create_dir(&model).expect("mkdir");
    let fixture = root().join("tests/fixtures/tiny-bert/BertForMaskedLM");
    for name in ["config.json", "model.safetensors", "tokenizer_config.json"] {
        std::fs::copy(fixture.join(name), model.join(name)).expect("copy");
    }
    // One token more than the model's 64: "extra" gets id 64.
    let mut vocab = std::fs::read_to_string(fixture.join("vocab.txt")).expect("vocab");
    vocab.push_str("extra\n");
    std::fs::write(model.join("vocab.txt"), vocab).expect("vocab");
    let train = dir.path().join("train.tsv");
    std::fs::write(&train, "text\tlabel\nw5 w6\tpos\nw7 extra w8\tneg\n").expect("data");
    let cfg = dir.path().join("run.toml");
    std::fs::write(
        &cfg,
        format!(
            "[model]\ninit_from = \"{}\"\n\n[task]\nkind = \"sequence-classification\"\ntrain_file = \"{}\"\nvalid_file = \"{}\"\nmax_length = 16\n\n[training]\nepochs = 1\nbatch_size = 2\n\n[output]\ndir = \"{}\"\n",
            model.display(),
            train.display(),
            train.display(),
            dir.path().join("out").display()
        ),
    )
    .expect("config");
    fails_in_one_line(
        &["finetune", "--config", cfg.to_str().expect("utf8")],
        &format!(
            "{}:3: token \"extra\" has id 64, outside the model's vocabulary of 64",
            train.display()
        ),
    );
}

/// Fine-tuning on two ranks (`bert launch`, feature `mpi`) ends with the weights of one
/// process accumulating two micro-batches, dropout on, including the last step of each epoch
/// that leaves the second rank without data; only rank 0 writes the results.
#[cfg(feature = "mpi")]
#[test]
fn two_ranks_fine_tune_like_gradient_accumulation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = classification_config(dir.path(), "base", false);
    let run = |name: &str, launch: bool, extra: &[&str]| {
        let out = dir.path().join(name);
        let output = format!("output.dir={:?}", out.display().to_string());
        let mut args: Vec<&str> = if launch {
            vec!["launch", "--nodes", "2", "--"]
        } else {
            Vec::new()
        };
        args.extend(["finetune", "--config", cfg.to_str().expect("utf8")]);
        for s in [
            output.as_str(),
            "training.epochs=3",
            "training.batch_size=16",
        ]
        .iter()
        .chain(extra)
        {
            args.extend(["--set", s]);
        }
        ok(&args);
        assert!(out.join("eval.json").is_file(), "rank 0 writes eval.json");
        read_tensors(&out.join("final/model.safetensors"))
    };
    let ranks = run("ranks", true, &[]);
    let one = run("one", false, &["training.gradient_accumulation_steps=2"]);
    let diff = max_abs_diff(&ranks, &one);
    assert!(diff < 1e-6, "2 ranks vs accumulation 2: {diff}");
}
