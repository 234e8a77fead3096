//! wgpu against the CPU and transformers, through the `bert` binary with `--backend wgpu`:
//! training steps of a tiny BERT (`bench train`), `encode` on every head's fixture, 20 steps of
//! pretraining step by step, and two steps of every fine-tuning head. Runs when the binary has
//! the `wgpu` feature (`cargo test --features wgpu`); without a GPU, Mesa's software Vulkan
//! (Debian: `apt-get install mesa-vulkan-drivers`) runs the same CubeCL kernels. Skips, saying
//! so, where no adapter exists, except under CI (`CI=true`), where that fails.
#![cfg(feature = "wgpu")]

mod common;
#[path = "common/encode.rs"]
mod encode;
#[path = "common/tasks.rs"]
mod tasks;
use common::*;
use tasks::*;

use std::path::{Path, PathBuf};

/// The value of a wgpu run, or `None` (after saying so) where this machine has no adapter;
/// under `CI=true` no adapter is a failure.
fn on_wgpu<T>(run: Result<T, String>) -> Option<T> {
    match run {
        Ok(v) => Some(v),
        Err(e) if e.contains("no wgpu adapter") => {
            // CI installs Mesa's software Vulkan: there, no adapter is a failure, not a skip.
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true and no wgpu adapter ({e}): install mesa-vulkan-drivers"
            );
            eprintln!(
                "SKIPPED: no wgpu adapter on this machine ({e}); install mesa-vulkan-drivers"
            );
            None
        }
        Err(e) => panic!("wgpu run failed: {e}"),
    }
}

/// The commands these tests run, parsed as the `bert` binary parses them.
#[derive(clap::Parser)]
enum Command {
    Encode(bert_train::commands::encode::EncodeArgs),
    Pretrain(bert_train::commands::pretrain::PretrainArgs),
    Finetune(bert_train::commands::finetune::FinetuneArgs),
}

/// Runs `bert args…` in this process, through the library code the binary dispatches to: the
/// wgpu kernels compiled for one command are reused by the next (on Mesa's software Vulkan a
/// new process spends half a minute compiling them again).
fn run(args: &[&str]) -> Result<(), String> {
    use clap::Parser;
    let command = Command::try_parse_from(std::iter::once("bert").chain(args.iter().copied()))
        .map_err(|e| e.to_string())?;
    match command {
        Command::Encode(a) => bert_train::commands::encode::run(&a),
        Command::Pretrain(a) => bert_train::commands::pretrain::run(&a),
        Command::Finetune(a) => bert_train::commands::finetune::run(&a),
    }
    .map_err(|e| format!("{e:#}"))
}

/// The `train` losses of a run's metrics.jsonl, in step order.
fn train_losses(run_dir: &Path) -> Vec<f64> {
    let metrics = std::fs::read_to_string(run_dir.join("metrics.jsonl")).expect("metrics.jsonl");
    metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json"))
        .filter(|l| l["split"] == "train")
        .map(|l| l["loss"].as_f64().expect("loss"))
        .collect()
}

/// Asserts two loss curves agree within `tol` step by step.
fn same_losses(what: &str, cpu: &[f64], gpu: &[f64], tol: f64) {
    assert_eq!(cpu.len(), gpu.len(), "{what}: {cpu:?} vs {gpu:?}");
    for (i, (a, b)) in cpu.iter().zip(gpu).enumerate() {
        assert!(
            (a - b).abs() < tol,
            "{what}, step {}: cpu {a} wgpu {b} (cpu {cpu:?}, wgpu {gpu:?})",
            i + 1
        );
    }
}

fn final_loss(backend: &str, precision: &str) -> Result<(f64, f64), String> {
    let json = bench_train_tiny(&[
        "--set",
        "optimizer.learning_rate=1e-3",
        "--steps",
        "3",
        "--warmup",
        "0",
        "--backend",
        backend,
        "--precision",
        precision,
    ])?;
    Ok((
        json["first_loss"].as_f64().ok_or("first_loss")?,
        json["final_loss"].as_f64().ok_or("final_loss")?,
    ))
}

#[test]
fn wgpu_training_steps_match_the_cpu() {
    let cpu = final_loss("cpu", "f32").expect("cpu run");
    let Some(gpu) = on_wgpu(final_loss("wgpu", "f32")) else {
        return;
    };
    eprintln!("cpu losses {cpu:?}, wgpu losses {gpu:?}");
    assert!(
        (cpu.0 - gpu.0).abs() < 1e-4,
        "first step: cpu {cpu:?} wgpu {gpu:?}"
    );
    assert!(
        (cpu.1 - gpu.1).abs() < 1e-3,
        "third step: cpu {cpu:?} wgpu {gpu:?}"
    );
    assert!(cpu.1 < cpu.0, "the loss falls: {cpu:?}");
}

/// Mixed precision under fusion: the f16 compute copy (cast once per step, as leaves) trains
/// on wgpu as the CPU's f16 does.
#[test]
fn wgpu_mixed_precision_steps_match_the_cpu() {
    let cpu = final_loss("cpu", "f16").expect("cpu run");
    let Some(gpu) = on_wgpu(final_loss("wgpu", "f16")) else {
        return;
    };
    eprintln!("f16: cpu losses {cpu:?}, wgpu losses {gpu:?}");
    assert!(
        (cpu.0 - gpu.0).abs() < 1e-3 && (cpu.1 - gpu.1).abs() < 1e-3,
        "cpu {cpu:?} wgpu {gpu:?}"
    );
    assert!(cpu.1 < cpu.0, "the loss falls: {cpu:?}");
}

#[test]
fn wgpu_encode_every_head_matches_transformers() {
    on_wgpu(encode::encode_every_head_matches_transformers_on(
        "wgpu", run,
    ));
}

/// A pretraining config on the fixture corpus, dropout off (the CPU and the GPU draw different
/// masks), starting from `init` when given.
fn pretrain_config(dir: &Path, name: &str, init: Option<&Path>) -> PathBuf {
    let model = match init {
        Some(init) => format!("init_from = \"{}\"", init.display()),
        None => "preset = \"tiny\"\nhidden_size = 32\nnum_attention_heads = 2\nintermediate_size = 64\nmax_position_embeddings = 64".into(),
    };
    let corpus = root().join("tests/fixtures/corpus");
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "[model]\n{model}\nhidden_dropout_prob = 0.0\nattention_probs_dropout_prob = 0.0\n\n[data]\ntokenizer = \"{}\"\ntrain_files = [\"{}/*.txt\"]\nvalid_files = [\"{}/moby.txt\"]\nprepared_dir = \"{}/prepared\"\nmax_seq_length = 32\n\n[optimizer]\nlearning_rate = 1e-3\n\n[training]\nbatch_size = 4\nlog_every_steps = 1\neval_every_steps = 0\nsave_every_steps = 0\neval_batches = 2\n\n[output]\ndir = \"{}\"\n",
            minilm_dir().display(),
            corpus.display(),
            corpus.display(),
            dir.display(),
            dir.join(name).display()
        ),
    )
    .expect("config");
    path
}

/// 20 pretraining steps on wgpu from the same weights and data as on the CPU (dropout off):
/// every step's loss within 1e-4 of the CPU's.
#[test]
fn wgpu_pretraining_follows_the_cpu_step_by_step() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The same initial weights on both backends: a model drawn on the CPU, exported.
    let init = pretrain_config(dir.path(), "init", None);
    run(&[
        "pretrain",
        "--config",
        init.to_str().expect("utf8"),
        "--set",
        "training.max_steps=1",
    ])
    .expect("init");
    let init_dir = dir.path().join("init/final");
    let cfg = pretrain_config(dir.path(), "run", Some(&init_dir));
    let train = |backend: &str| -> Result<Vec<f64>, String> {
        let out = dir.path().join(backend);
        run(&[
            "pretrain",
            "--config",
            cfg.to_str().expect("utf8"),
            "--set",
            "training.max_steps=20",
            "--set",
            &format!("training.backend=\"{backend}\""),
            "--set",
            &format!("output.dir=\"{}\"", out.display()),
        ])?;
        Ok(train_losses(&out))
    };
    let cpu = train("cpu").expect("cpu run");
    assert_eq!(cpu.len(), 20);
    assert!(cpu[19] < cpu[0], "the loss falls: {cpu:?}");
    let Some(gpu) = on_wgpu(train("wgpu")) else {
        return;
    };
    same_losses("pretraining", &cpu, &gpu, 1e-4);
}

/// A copy of the `arch` fixture with the MLM fixture's vocabulary: a model directory that
/// fine-tuning loads whole (head included), so the CPU and wgpu start from the same weights.
fn head_fixture(dir: &Path, arch: &str) -> PathBuf {
    let to = dir.join(arch);
    std::fs::create_dir_all(&to).expect("mkdir");
    let fixtures = root().join("tests/fixtures/tiny-bert");
    for name in ["config.json", "model.safetensors", "pytorch_model.bin"] {
        let from = fixtures.join(arch).join(name);
        if from.is_file() {
            std::fs::copy(from, to.join(name)).expect("copy");
        }
    }
    for name in ["vocab.txt", "tokenizer_config.json"] {
        std::fs::copy(fixtures.join("BertForMaskedLM").join(name), to.join(name)).expect("copy");
    }
    to
}

/// Two steps of every fine-tuning head on wgpu (from fixtures holding the heads, dropout
/// off) give the CPU's losses within 1e-4, and the run evaluates and exports on wgpu.
#[test]
fn wgpu_fine_tuning_heads_step_like_the_cpu() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    // Three labels, as the fixtures' heads have.
    let seqcls = d.join("seqcls.tsv");
    let mut text = String::from("text\tlabel\n");
    for i in 0..12 {
        text.push_str(&format!(
            "w{} w{} w{}\t{}\n",
            5 + i,
            20 + i,
            40 + i,
            ["a", "b", "c"][i % 3]
        ));
    }
    std::fs::write(&seqcls, text).expect("tsv");
    let conll = d.join("ner.conll");
    let mut text = String::new();
    for i in 0..12 {
        text.push_str(&format!(
            "w{}\tB-PER\nw{}\tI-PER\nw{}\tO\n\n",
            5 + i,
            20 + i,
            40 + i
        ));
    }
    std::fs::write(&conll, text).expect("conll");
    let squad = d.join("qa.json");
    write_squad(&squad, 12, 3);
    let mc = d.join("mc.jsonl");
    let mut text = String::new();
    for i in 0..12 {
        let line = serde_json::json!({"context": "w61 w62", "choices": [format!("w{} w6", 5 + i), format!("w{} w41", 40 + i)], "label": i % 2});
        text.push_str(&format!("{line}\n"));
    }
    std::fs::write(&mc, text).expect("mc");
    for (arch, kind, data, task) in [
        (
            "BertForSequenceClassification",
            "sequence-classification",
            &seqcls,
            "max_length = 16",
        ),
        (
            "BertForTokenClassification",
            "token-classification",
            &conll,
            "max_length = 16",
        ),
        (
            "BertForQuestionAnswering",
            "question-answering",
            &squad,
            "max_length = 16\ndoc_stride = 4",
        ),
        (
            "BertForMultipleChoice",
            "multiple-choice",
            &mc,
            "max_length = 16",
        ),
    ] {
        let model = head_fixture(d, arch);
        let cfg = task_config(d, arch, kind, (data, data), task, "batch_size = 4");
        let train = |backend: &str| -> Result<Vec<f64>, String> {
            let out = d.join(format!("{arch}-{backend}"));
            run(&[
                "finetune",
                "--config",
                cfg.to_str().expect("utf8"),
                "--set",
                &format!("model.init_from=\"{}\"", model.display()),
                "--set",
                "model.hidden_dropout_prob=0.0",
                "--set",
                "model.attention_probs_dropout_prob=0.0",
                "--set",
                "training.max_steps=2",
                "--set",
                "optimizer.learning_rate=1e-3",
                "--set",
                "training.log_every_steps=1",
                "--set",
                &format!("training.backend=\"{backend}\""),
                "--set",
                &format!("output.dir=\"{}\"", out.display()),
            ])?;
            assert!(out.join("final").is_dir(), "{arch} on {backend}: no final/");
            Ok(train_losses(&out))
        };
        let cpu = train("cpu").expect("cpu run");
        assert_eq!(cpu.len(), 2, "{arch}: {cpu:?}");
        let Some(gpu) = on_wgpu(train("wgpu")) else {
            return;
        };
        same_losses(arch, &cpu, &gpu, 1e-4);
    }
}
