//! Processes of a multi-node run over MPI (feature `mpi`, Open MPI's `mpirun` on 127.0.0.1):
//! `bert launch` starts them, they all-reduce, a process with another configuration is refused
//! on every process, a killed process stops the others within seconds naming its rank.
#![cfg(feature = "mpi")]

mod common;
use common::*;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `mpirun`'s arguments for two ranks on this machine (as `bert launch` passes them).
fn mpirun() -> Command {
    let mut c = Command::new("mpirun");
    c.args(["--oversubscribe", "--tag-output"]);
    if std::env::var("USER").as_deref() == Ok("root") || is_root() {
        c.arg("--allow-run-as-root");
    }
    c
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

#[test]
fn launched_processes_all_reduce_and_agree() {
    let out = ok(&[
        "launch",
        "--nodes",
        "2",
        "--",
        "cluster-check",
        "--rounds",
        "20",
        "--agree-on",
        "same",
    ]);
    for rank in 0..2 {
        assert!(
            out.contains(&format!(
                "rank {rank} of 2 (local rank {rank}): 20 all-reduce rounds"
            )),
            "rank {rank} did not check in: {out}"
        );
    }
    // Without a launcher: one process, rank 0 of 1.
    let single = ok(&["cluster-check", "--rounds", "2"]);
    assert!(single.contains("rank 0 of 1"), "{single}");
}

#[test]
fn a_process_with_another_configuration_is_refused_by_all() {
    // MPMD: rank 0 and rank 1 get different texts to agree on.
    let bert = env!("CARGO_BIN_EXE_bert");
    let out = mpirun()
        .args(["-np", "1", bert, "cluster-check", "--agree-on", "config A"])
        .args([
            ":",
            "-np",
            "1",
            bert,
            "cluster-check",
            "--agree-on",
            "config B",
        ])
        .output()
        .expect("mpirun");
    assert!(!out.status.success(), "a mismatch must fail");
    let stderr = String::from_utf8_lossy(&out.stderr);
    for rank in 0..2 {
        assert!(
            stderr.contains(&format!("[1,{rank}]<stderr>:"))
                && stderr.contains("differs between the processes: rank(s) 1 against rank 0"),
            "rank {rank} did not refuse: {stderr}"
        );
    }
}

#[test]
fn a_killed_process_stops_the_others_naming_it() {
    let launch = Command::new(env!("CARGO_BIN_EXE_bert"))
        .args([
            "launch",
            "--nodes",
            "2",
            "--",
            "cluster-check",
            "--rounds",
            "1000000000",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("bert launch");
    // Let both ranks start all-reducing, then kill one.
    std::thread::sleep(Duration::from_secs(3));
    let pids = Command::new("pgrep")
        // The ranks' command lines (mpirun's own starts with "mpirun").
        .args(["-f", r"^\S*bert cluster-check --rounds 1000000000"])
        .output()
        .expect("pgrep");
    let pids = String::from_utf8_lossy(&pids.stdout).to_string();
    let victim = pids.lines().last().expect("a rank's pid");
    let killed = Instant::now();
    assert!(
        Command::new("kill")
            .args(["-9", victim])
            .status()
            .expect("kill")
            .success()
    );
    let out = launch.wait_with_output().expect("wait");
    let waited = killed.elapsed();
    assert!(!out.status.success(), "the launch fails");
    assert!(
        waited < Duration::from_secs(60),
        "the others stopped after {waited:?}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("process rank") && stderr.contains("exited on signal 9"),
        "the launcher names the killed rank: {stderr}"
    );
}

/// `bert launch --nodes 2 -- pretrain …` with `settings`, output in `dir/name`; the final
/// weights.
fn pretrain_on_two_ranks(
    dir: &std::path::Path,
    name: &str,
    settings: &[&str],
) -> std::collections::BTreeMap<String, Vec<f32>> {
    let cfg = pretrain_config(dir, name);
    let mut args = vec!["launch", "--nodes", "2", "--", "pretrain", "--config"];
    args.push(cfg.to_str().expect("utf8"));
    for s in settings {
        args.extend(["--set", s]);
    }
    ok(&args);
    read_tensors(&dir.join(name).join("final/model.safetensors"))
}

/// Pretraining on two ranks (one CPU device each) trains like one process: with dropout off
/// like one device accumulating two micro-batches, with dropout on like two replicas in one
/// process (rank r draws replica r's masks); two runs are identical; only rank 0 writes.
#[test]
fn two_ranks_pretrain_like_one_process() {
    let dir = tempfile::tempdir().expect("tempdir");
    let no_dropout = [
        "model.hidden_dropout_prob=0.0",
        "model.attention_probs_dropout_prob=0.0",
    ];
    let two = pretrain_on_two_ranks(dir.path(), "two", &no_dropout);
    let cfg = pretrain_config(dir.path(), "one");
    let mut args = vec!["pretrain", "--config", cfg.to_str().expect("utf8")];
    for s in no_dropout
        .iter()
        .chain(&["training.gradient_accumulation_steps=2"])
    {
        args.extend(["--set", s]);
    }
    ok(&args);
    let one = read_tensors(&dir.path().join("one/final/model.safetensors"));
    let diff = max_abs_diff(&one, &two);
    assert!(diff < 1e-6, "2 ranks vs accumulation 2: {diff}");

    let dropout = pretrain_on_two_ranks(dir.path(), "dropout", &[]);
    let again = pretrain_on_two_ranks(dir.path(), "again", &[]);
    assert_eq!(
        max_abs_diff(&dropout, &again),
        0.0,
        "two identical 2-rank runs"
    );
    let cfg = pretrain_config(dir.path(), "replicas");
    ok(&[
        "pretrain",
        "--config",
        cfg.to_str().expect("utf8"),
        "--set",
        "training.devices=[0, 0]",
    ]);
    let replicas = read_tensors(&dir.path().join("replicas/final/model.safetensors"));
    let diff = max_abs_diff(&replicas, &dropout);
    assert!(
        diff < 1e-6,
        "2 ranks vs 2 replicas in one process, dropout on: {diff}"
    );
    assert!(
        max_abs_diff(&dropout, &two) > 1e-4,
        "dropout changes the weights (the check above is not vacuous)"
    );
    // One metrics file, written by rank 0 alone: 6 train lines.
    let metrics = std::fs::read_to_string(dir.path().join("two/metrics.jsonl")).expect("metrics");
    assert_eq!(
        metrics.lines().filter(|l| l.contains("\"train\"")).count(),
        6
    );
}

/// A rank killed mid-run stops the other within 60 s, the launcher naming it; both restarted
/// with `--resume` continue from the last checkpoint and end with the weights of a run that
/// was never interrupted.
#[test]
fn a_killed_rank_stops_the_run_and_resume_finishes_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let long = [
        "training.max_steps=40",
        "training.save_every_steps=4",
        "training.eval_every_steps=0",
    ];
    let full = pretrain_on_two_ranks(dir.path(), "full", &long);
    let cfg = pretrain_config(dir.path(), "killed");
    let mut args = vec!["launch", "--nodes", "2", "--", "pretrain", "--config"];
    args.push(cfg.to_str().expect("utf8"));
    for s in long {
        args.extend(["--set", s]);
    }
    let launch = Command::new(env!("CARGO_BIN_EXE_bert"))
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("bert launch");
    // Kill a rank once the run has a checkpoint.
    let checkpoints = dir.path().join("killed/checkpoints");
    let started = Instant::now();
    while std::fs::read_dir(&checkpoints).map_or(true, |d| d.count() == 0) {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no checkpoint appeared"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let pids = Command::new("pgrep")
        .args([
            "-f",
            &format!(r"^\S*bert pretrain --config {}", cfg.display()),
        ])
        .output()
        .expect("pgrep");
    let pids = String::from_utf8_lossy(&pids.stdout).to_string();
    let victim = pids.lines().last().expect("a rank's pid");
    let killed = Instant::now();
    assert!(
        Command::new("kill")
            .args(["-9", victim])
            .status()
            .expect("kill")
            .success()
    );
    let out = launch.wait_with_output().expect("wait");
    assert!(!out.status.success(), "the launch fails");
    assert!(
        killed.elapsed() < Duration::from_secs(60),
        "the other rank stopped in time"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("exited on signal 9"),
        "the killed rank is named: {stderr}"
    );
    assert!(
        !dir.path().join("killed/final").exists(),
        "the run was cut before the end"
    );
    args.push("--resume");
    ok(&args);
    let resumed = read_tensors(&dir.path().join("killed/final/model.safetensors"));
    let diff = max_abs_diff(&full, &resumed);
    assert!(diff < 1e-6, "killed and resumed vs uninterrupted: {diff}");
}

/// Ranks started with different configurations are refused at start-up, before training.
#[test]
fn ranks_with_different_configurations_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = pretrain_config(dir.path(), "mismatch");
    let cfg = cfg.to_str().expect("utf8");
    let bert = env!("CARGO_BIN_EXE_bert");
    let out = mpirun()
        .args(["-np", "1", bert, "pretrain", "--config", cfg])
        .args([
            ":",
            "-np",
            "1",
            bert,
            "pretrain",
            "--config",
            cfg,
            "--set",
            "training.batch_size=4",
        ])
        .output()
        .expect("mpirun");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr
            .contains("the configuration differs between the processes: rank(s) 1 against rank 0"),
        "{stderr}"
    );
    assert!(
        !dir.path().join("mismatch/checkpoints").exists(),
        "nothing trained"
    );
}
