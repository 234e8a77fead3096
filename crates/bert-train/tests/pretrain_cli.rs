//! `bert pretrain` end to end on the fixture corpus with a very small model: exact resume,
//! refusing to overwrite a run, bad config keys, a diverging (NaN) loss.

mod common;
use common::*;

#[test]
fn resume_after_interrupt_gives_identical_weights() {
    let dir = tempfile::tempdir().expect("tempdir");
    let full = pretrain_config(dir.path(), "full");
    // The uninterrupted run cuts and masks its batches on the training thread, the interrupted
    // one on the prefetch worker (the default): same batches, so the same weights.
    ok(&[
        "pretrain",
        "--config",
        full.to_str().expect("utf8"),
        "--set",
        "training.prefetch_batches=0",
    ]);
    let halves = pretrain_config(dir.path(), "halves");
    let log = ok(&[
        "pretrain",
        "--config",
        halves.to_str().expect("utf8"),
        "--set",
        "training.stop_after_steps=3",
    ]);
    assert!(log.contains("checkpoint saved at step 3"), "{log}");
    assert!(!dir.path().join("halves/final").exists());
    // Without --resume an existing run is not overwritten.
    let again = bert(&["pretrain", "--config", halves.to_str().expect("utf8")]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--resume"));
    ok(&[
        "pretrain",
        "--config",
        halves.to_str().expect("utf8"),
        "--resume",
    ]);
    let a = std::fs::read(dir.path().join("full/final/model.safetensors")).expect("full");
    let b = std::fs::read(dir.path().join("halves/final/model.safetensors")).expect("halves");
    let (a, b) = (
        safetensors::SafeTensors::deserialize(&a).expect("full"),
        safetensors::SafeTensors::deserialize(&b).expect("halves"),
    );
    let floats = |t: safetensors::tensor::TensorView<'_>| -> Vec<f32> {
        t.data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
    let mut worst = 0.0f32;
    for (name, ta) in a.tensors() {
        let tb = b.tensor(&name).expect("same tensors");
        for (x, y) in floats(ta).iter().zip(floats(tb)) {
            worst = worst.max((x - y).abs());
        }
    }
    // Burn 0.21's autodiff sums gradient contributions in an order that varies between
    // processes: two uninterrupted runs already differ by ~3e-8. A wrong data position, optimizer
    // state or dropout seed would move weights by ~1e-3 (learning rate 1e-3).
    assert!(
        worst < 1e-6,
        "3 + resume + 3 steps (prefetched) end {worst} away from 6 uninterrupted steps (inline)"
    );
    // Metrics: one train line per step, eval lines with MLM/NSP metrics, checkpoints kept ≤ 2.
    let metrics = std::fs::read_to_string(dir.path().join("full/metrics.jsonl")).expect("metrics");
    let lines: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(lines.iter().filter(|l| l["split"] == "train").count(), 6);
    let eval = lines
        .iter()
        .find(|l| l["split"] == "eval")
        .expect("eval line");
    for key in [
        "loss",
        "mlm_loss",
        "mlm_accuracy",
        "nsp_accuracy",
        "perplexity",
        "step",
        "epoch",
    ] {
        assert!(eval.get(key).is_some(), "eval lacks {key}");
    }
    for key in ["lr", "grad_norm", "tokens_per_second", "data_wait_fraction"] {
        assert!(lines[0].get(key).is_some(), "train lacks {key}");
    }
    let kept = std::fs::read_dir(dir.path().join("full/checkpoints"))
        .expect("checkpoints")
        .count();
    assert_eq!(kept, 2);
    assert!(dir.path().join("full/config.toml").is_file());
    // The final model is an HF directory that `bert encode` loads.
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "{\"text\": \"Call me Ishmael.\"}\n").expect("input");
    ok(&[
        "encode",
        "--model",
        dir.path().join("full/final").to_str().expect("utf8"),
        "--input",
        input.to_str().expect("utf8"),
        "--output",
        dir.path().join("e.safetensors").to_str().expect("utf8"),
    ]);
}

#[test]
fn bad_configs_and_diverging_runs_fail_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = pretrain_config(dir.path(), "bad");
    let out = bert(&[
        "pretrain",
        "--config",
        cfg.to_str().expect("utf8"),
        "--set",
        "training.max_step=3",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("max_step") && err.contains("bad.toml"),
        "{err}"
    );
    let out = bert(&[
        "pretrain",
        "--config",
        cfg.to_str().expect("utf8"),
        "--set",
        "optimizer.learning_rate=1e30",
    ]);
    assert!(!out.status.success(), "a diverging run must stop");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("loss is") && err.contains("no checkpoint had been written yet"),
        "{err}"
    );
    let out = bert(&[
        "pretrain",
        "--config",
        cfg.to_str().expect("utf8"),
        "--resume",
        "--set",
        "output.dir=/tmp/does-not-exist-bert-run",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing to resume"));
}

#[test]
fn bf16_mixed_precision_tracks_f32() {
    let dir = tempfile::tempdir().expect("tempdir");
    let losses = |name: &str, precision: &str| -> Vec<f64> {
        let cfg = pretrain_config(dir.path(), name);
        ok(&[
            "pretrain",
            "--config",
            cfg.to_str().expect("utf8"),
            "--set",
            &format!("training.precision=\"{precision}\""),
            "--set",
            "training.eval_every_steps=0",
        ]);
        std::fs::read_to_string(dir.path().join(name).join("metrics.jsonl"))
            .expect("metrics")
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json"))
            .filter(|l| l["split"] == "train")
            .map(|l| {
                // The step computed in the precision asked for, not silently in f32.
                assert_eq!(l["compute_dtype"], precision, "{l}");
                l["loss"].as_f64().expect("loss")
            })
            .collect()
    };
    let full = losses("f32", "f32");
    let half = losses("bf16", "bf16");
    assert_eq!(full.len(), 6);
    assert_eq!(half.len(), 6);
    // Same data, same f32 master weights: bf16 matrix products move the loss by well under
    // 1 % over 6 steps at learning rate 1e-3 (a broken cast or a gradient that skipped the
    // master weights would leave the loss where it started or send it elsewhere).
    for (step, (a, b)) in full.iter().zip(&half).enumerate() {
        assert!(
            (a - b).abs() <= 0.01 * a.abs(),
            "step {}: f32 loss {a} vs bf16 {b}",
            step + 1
        );
    }
    assert!(half[5] < half[0], "bf16 loss did not fall: {half:?}");
    // The saved model keeps its f32 master weights.
    let bytes = std::fs::read(dir.path().join("bf16/final/model.safetensors")).expect("weights");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    assert!(
        st.tensors()
            .iter()
            .all(|(_, t)| t.dtype() == safetensors::Dtype::F32)
    );
}

/// Data parallelism over Burn's collective all-reduce: two replicas (sharing the one CPU device)
/// with one micro-batch each end each step with the weights of one replica accumulating the
/// same two micro-batches. Dropout is off: the replicas draw their masks from different seeds.
#[test]
fn two_replicas_match_gradient_accumulation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = |name: &str, extra: &str| -> std::collections::BTreeMap<String, Vec<f32>> {
        let cfg = pretrain_config(dir.path(), name);
        ok(&[
            "pretrain",
            "--config",
            cfg.to_str().expect("utf8"),
            "--set",
            "model.hidden_dropout_prob=0.0",
            "--set",
            "model.attention_probs_dropout_prob=0.0",
            "--set",
            "training.eval_every_steps=0",
            "--set",
            extra,
        ]);
        read_tensors(&dir.path().join(name).join("final/model.safetensors"))
    };
    assert_two_replicas_match_accumulation(run);
    // The first replica's metrics count both replicas' sequences.
    let first: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(dir.path().join("ddp/metrics.jsonl"))
            .expect("metrics")
            .lines()
            .next()
            .expect("a line"),
    )
    .expect("json");
    assert!(first["loss"].as_f64().expect("loss").is_finite());
    let bad = pretrain_config(dir.path(), "bad");
    fails_in_one_line(
        &[
            "pretrain",
            "--config",
            bad.to_str().expect("utf8"),
            "--set",
            "training.devices=[0, 5]",
        ],
        "no device 5",
    );
}

/// Two replicas with dropout on: each draws its masks from its own stream keyed by (seed,
/// step, rank), so two identical runs end with the same weights and a run stopped and resumed
/// ends with the uninterrupted one's (within the 3e-8 of Burn's gradient summation order;
/// replicas racing for one RNG end ~1e-3 apart).
#[test]
fn two_replicas_with_dropout_are_reproducible_and_resume_exactly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = |name: &str, extra: &[&str]| {
        let cfg = pretrain_config(dir.path(), name);
        let mut args = vec![
            "pretrain",
            "--config",
            cfg.to_str().expect("utf8"),
            "--set",
            "training.devices=[0, 0]",
            "--set",
            "training.eval_every_steps=0",
        ];
        args.extend(extra);
        ok(&args);
    };
    let weights = |name: &str| read_tensors(&dir.path().join(name).join("final/model.safetensors"));
    run("a", &[]);
    run("b", &[]);
    let worst = max_abs_diff(&weights("a"), &weights("b"));
    assert!(worst < 1e-6, "two identical runs end {worst} apart");
    run("c", &["--set", "training.stop_after_steps=3"]);
    let cfg = pretrain_config(dir.path(), "c");
    ok(&[
        "pretrain",
        "--config",
        cfg.to_str().expect("utf8"),
        "--resume",
        "--set",
        "training.devices=[0, 0]",
        "--set",
        "training.eval_every_steps=0",
    ]);
    let worst = max_abs_diff(&weights("a"), &weights("c"));
    assert!(
        worst < 1e-6,
        "stopped and resumed ends {worst} from the uninterrupted run"
    );
}

/// `bert bench train --devices 0,0`: two replicas stepping on the same batch average two equal
/// gradients, so their losses are the single replica's; the report counts both replicas.
#[test]
fn bench_train_on_two_replicas_steps_like_one() {
    let run = |extra: &[&str]| {
        let mut args = vec!["--steps", "2", "--warmup", "1"];
        args.extend(extra);
        bench_train_tiny(&args).expect("bench train")
    };
    // Each replica steps on its own batch; one device accumulating the same two batches must
    // give the same losses, which a replica that skipped the all-reduce would not.
    let one = run(&[
        "--devices",
        "0",
        "--set",
        "training.gradient_accumulation_steps=2",
    ]);
    let two = run(&["--devices", "0,0"]);
    assert_eq!(
        (one["devices"].as_u64(), two["devices"].as_u64()),
        (Some(1), Some(2))
    );
    for key in ["first_loss", "final_loss"] {
        let (a, b) = (one[key].as_f64().expect(key), two[key].as_f64().expect(key));
        assert!((a - b).abs() < 1e-5, "{key}: one replica {a}, two {b}");
    }
    assert!(one["final_loss"].as_f64() < one["first_loss"].as_f64());
    // The batches differ: one device on one of them reports another loss.
    let single = run(&["--devices", "0"]);
    let (a, b) = (
        single["first_loss"].as_f64().expect("loss"),
        two["first_loss"].as_f64().expect("loss"),
    );
    assert!(
        (a - b).abs() > 1e-4,
        "replicas saw different batches: {a} vs {b}"
    );
}

/// Ctrl-C (SIGINT) ends a data-parallel run: after the step in progress, with a checkpoint,
/// and `--resume` continues it.
#[test]
fn ctrl_c_ends_a_data_parallel_run_with_a_checkpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = pretrain_config(dir.path(), "sigint");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_bert"))
        .args([
            "pretrain",
            "--config",
            cfg.to_str().expect("utf8"),
            "--set",
            "training.devices=[0, 0]",
            "--set",
            "training.max_steps=100000",
            "--set",
            "training.eval_every_steps=0",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn bert");
    // Wait for the first steps, then interrupt.
    let metrics = dir.path().join("sigint/metrics.jsonl");
    let started = std::time::Instant::now();
    while std::fs::read_to_string(&metrics).map_or(0, |m| m.lines().count()) < 2 {
        assert!(started.elapsed().as_secs() < 120, "no training steps");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let interrupted = std::time::Instant::now();
    let out = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            interrupted.elapsed().as_secs() < 60,
            "the run did not end after Ctrl-C"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err)
        .expect("stderr");
    assert!(out.success(), "{err}");
    assert!(err.contains("stopped: checkpoint saved at step"), "{err}");
    assert!(!dir.path().join("sigint/final").exists());
    let resumed = ok(&[
        "pretrain",
        "--config",
        cfg.to_str().expect("utf8"),
        "--resume",
        "--set",
        "training.devices=[0, 0]",
        "--set",
        "training.stop_after_steps=1",
    ]);
    assert!(resumed.contains("resumed from"), "{resumed}");
}

/// LAMB pretrains: on the fixture corpus the held-out MLM loss after 60 steps falls well
/// below an untrained model's (learning rate 0), as AdamW's does. LAMB's step on a weight
/// matrix is `lr` times its norm (the trust ratio), so it takes a larger learning rate than
/// AdamW, as in NVIDIA's recipes.
#[test]
fn lamb_pretraining_learns_like_adamw() {
    let dir = tempfile::tempdir().expect("tempdir");
    let eval = |name: &str, optimizer: &[&str]| -> (f64, f64) {
        let cfg = pretrain_config(dir.path(), name);
        let mut args = vec![
            "pretrain",
            "--config",
            cfg.to_str().expect("utf8"),
            "--set",
            "training.max_steps=60",
            "--set",
            "training.eval_every_steps=60",
            "--set",
            "training.eval_batches=8",
            "--set",
            "training.save_every_steps=0",
        ];
        for setting in optimizer {
            args.extend(["--set", setting]);
        }
        ok(&args);
        let metrics =
            std::fs::read_to_string(dir.path().join(name).join("metrics.jsonl")).expect("metrics");
        let last = metrics
            .lines()
            .rev()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json"))
            .find(|l| l["split"] == "eval")
            .expect("an eval line");
        let get = |k: &str| last[k].as_f64().expect("eval metric");
        (get("mlm_loss"), get("mlm_accuracy"))
    };
    let untrained = eval("untrained", &["optimizer.learning_rate=0.0"]);
    let adamw = eval("adamw", &[]);
    let lamb = eval(
        "lamb",
        &["optimizer.name=\"lamb\"", "optimizer.learning_rate=2e-2"],
    );
    eprintln!(
        "held-out MLM loss / accuracy after 60 steps: untrained {untrained:?}, AdamW {adamw:?}, \
         LAMB {lamb:?}"
    );
    let drop = |run: (f64, f64)| untrained.0 - run.0;
    assert!(
        drop(adamw) > 1.0,
        "AdamW learns: {adamw:?} vs untrained {untrained:?}"
    );
    assert!(
        drop(lamb) > 0.5 * drop(adamw),
        "LAMB learns as AdamW: {lamb:?} vs AdamW {adamw:?}, untrained {untrained:?}"
    );
}
