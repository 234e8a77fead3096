//! Processes of a multi-node run over MPI (feature `mpi`, Open MPI on 127.0.0.1), started by
//! `bert launch` (`mpirun`) or one by one with `[distributed]` (node 0 coordinating): they
//! all-reduce, train like one process, a process with another configuration is refused on every
//! process, a killed process stops the others within seconds naming it, `--resume` finishes.
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

/// A free port on 127.0.0.1 for a coordinator.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// `bert ARGS` as node `rank` of `nodes` started on its own, coordinated at 127.0.0.1:`port`:
/// node 1 through torchrun's environment variables, the others through `--set`.
fn node(args: &[&str], rank: usize, nodes: usize, port: u16) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bert"));
    c.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    if rank == 1 {
        c.env("WORLD_SIZE", nodes.to_string())
            .env("RANK", "1")
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string());
    } else {
        c.args(["--set", &format!("distributed.nodes={nodes}")])
            .args(["--set", &format!("distributed.node_rank={rank}")])
            .args([
                "--set",
                &format!("distributed.coordinator=\"127.0.0.1:{port}\""),
            ]);
    }
    c
}

/// Runs `args` as `nodes` nodes started one by one (the last first), each to its end; their
/// outputs (stdout + stderr) by rank, and whether each succeeded.
fn on_nodes(args: &[&str], nodes: usize) -> Vec<(bool, String)> {
    let port = free_port();
    let children: Vec<_> = (0..nodes)
        .rev()
        .map(|rank| node(args, rank, nodes, port).spawn().expect("spawn a node"))
        .collect();
    let mut outs: Vec<(bool, String)> = children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().expect("wait");
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).into_owned()
                    + &String::from_utf8_lossy(&out.stderr),
            )
        })
        .collect();
    outs.reverse();
    outs
}

#[test]
fn nodes_started_one_by_one_join_all_reduce_and_agree() {
    let outs = on_nodes(&["cluster-check", "--rounds", "20"], 3);
    for (rank, (ok, out)) in outs.iter().enumerate() {
        assert!(ok, "node {rank} failed: {out}");
        assert!(
            out.contains(&format!(
                "rank {rank} of 3 (local rank 0): 20 all-reduce rounds"
            )),
            "node {rank}: {out}"
        );
    }
    // A node started without the coordinator's address is refused in one line.
    fails_in_one_line(
        &["cluster-check", "--set", "distributed.nodes=2"],
        "distributed.nodes = 2 needs distributed.coordinator",
    );
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
fn a_process_with_another_configuration_is_refused() {
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
    assert!(
        stderr.contains("differs between the processes: rank(s) 1 against rank 0"),
        "the mismatch is named: {stderr}"
    );
    // Neither rank goes on (the first to fail ends the job; the other fails the same check).
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("check passed"), "{stdout}");
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

/// `bert pretrain` with `settings`, on two ranks (`bert launch --nodes 2`) when `launch`,
/// output in `dir/name`; the final weights.
fn pretrain(
    dir: &std::path::Path,
    name: &str,
    launch: bool,
    settings: &[&str],
) -> std::collections::BTreeMap<String, Vec<f32>> {
    let cfg = pretrain_config(dir, name);
    let mut args = if launch {
        vec!["launch", "--nodes", "2", "--"]
    } else {
        Vec::new()
    };
    args.extend(["pretrain", "--config", cfg.to_str().expect("utf8")]);
    for s in settings {
        args.extend(["--set", s]);
    }
    ok(&args);
    read_tensors(&dir.join(name).join("final/model.safetensors"))
}

/// `bert pretrain` with `settings` on two nodes started one by one, output in `dir/name`; the
/// final weights.
fn pretrain_on_nodes(
    dir: &std::path::Path,
    name: &str,
    settings: &[&str],
) -> std::collections::BTreeMap<String, Vec<f32>> {
    let cfg = pretrain_config(dir, name);
    let mut args = vec!["pretrain", "--config", cfg.to_str().expect("utf8")];
    for s in settings {
        args.extend(["--set", s]);
    }
    for (rank, (ok, out)) in on_nodes(&args, 2).iter().enumerate() {
        assert!(ok, "node {rank} failed: {out}");
    }
    read_tensors(&dir.join(name).join("final/model.safetensors"))
}

/// Pretraining on two ranks (one CPU device each, dropout on) trains like one process
/// accumulating two micro-batches (the m-th micro-batch of a step draws the same masks
/// wherever it runs); two runs are identical; only rank 0 writes.
#[test]
fn two_ranks_pretrain_like_one_process() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();
    let two = pretrain(dir, "two", true, &[]);
    let one = pretrain(
        dir,
        "one",
        false,
        &["training.gradient_accumulation_steps=2"],
    );
    let diff = max_abs_diff(&one, &two);
    assert!(diff < 1e-6, "2 ranks vs accumulation 2, dropout on: {diff}");
    let again = pretrain(dir, "again", true, &[]);
    assert_eq!(max_abs_diff(&two, &again), 0.0, "two identical 2-rank runs");
    // Nodes started one by one train as the launched ranks do.
    let nodes = pretrain_on_nodes(dir, "nodes", &[]);
    assert_eq!(
        max_abs_diff(&two, &nodes),
        0.0,
        "2 nodes vs 2 launched ranks"
    );
    // Two replicas in one process draw other masks (threads' streams) for the same data: the
    // masks matter, so the match above is not vacuous.
    let replicas = pretrain(dir, "replicas", false, &["training.devices=[0, 0]"]);
    assert!(
        max_abs_diff(&replicas, &two) > 1e-4,
        "dropout masks change the weights"
    );
    // One metrics file, written by rank 0 alone: 6 train lines.
    let metrics = std::fs::read_to_string(dir.join("two/metrics.jsonl")).expect("metrics");
    assert_eq!(
        metrics.lines().filter(|l| l.contains("\"train\"")).count(),
        6
    );
}

/// Two ranks of two replicas each (dropout on) train like one process of two replicas
/// accumulating two micro-batches: replica 0 of each rank sums over MPI and hands the sum to
/// its other replica.
#[test]
fn two_ranks_of_two_replicas_pretrain_like_one_process() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();
    let four = pretrain(dir, "four", true, &["training.devices=[0, 0]"]);
    let one = pretrain(
        dir,
        "one",
        false,
        &[
            "training.devices=[0, 0]",
            "training.gradient_accumulation_steps=2",
        ],
    );
    let diff = max_abs_diff(&one, &four);
    assert!(
        diff < 1e-6,
        "2 ranks × 2 replicas vs 2 replicas × 2: {diff}"
    );
    // (Without the broadcast a rank's second replica updates with its own rank's sum alone,
    // drifts, and its gradients pull the saved weights away from these.)
    let metrics = std::fs::read_to_string(dir.join("four/metrics.jsonl")).expect("metrics");
    assert_eq!(
        metrics.lines().filter(|l| l.contains("\"train\"")).count(),
        6
    );
}

/// `child`'s output once it ends; kills it and fails if it runs past `limit` (a node waiting
/// for ever for a lost one must fail the test, not hang it).
fn output_within(child: std::process::Child, limit: Duration) -> std::process::Output {
    let pid = child.id();
    let (send, receive) = std::sync::mpsc::channel();
    std::thread::spawn(move || send.send(child.wait_with_output()));
    match receive.recv_timeout(limit) {
        Ok(out) => out.expect("wait"),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("the process ran past {limit:?}");
        }
    }
}

/// Waits (up to 2 minutes) until the run in `run` has a complete checkpoint (`step-N`, renamed
/// into place once written).
fn wait_for_checkpoint(run: &std::path::Path) {
    let started = Instant::now();
    let complete = || {
        std::fs::read_dir(run.join("checkpoints")).is_ok_and(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("step-"))
        })
    };
    while !complete() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no checkpoint appeared in {}",
            run.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
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
    let full = pretrain(dir.path(), "full", true, &long);
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
    wait_for_checkpoint(&dir.path().join("killed"));
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

    // Nodes started one by one: node 0 (the coordinator) names the lost node and stops.
    let cfg = pretrain_config(dir.path(), "lost");
    let mut args = vec!["pretrain", "--config", cfg.to_str().expect("utf8")];
    for s in long {
        args.extend(["--set", s]);
    }
    let port = free_port();
    let mut second = node(&args, 1, 2, port).spawn().expect("node 1");
    let first = node(&args, 0, 2, port).spawn().expect("node 0");
    wait_for_checkpoint(&dir.path().join("lost"));
    second.kill().expect("SIGKILL node 1");
    let killed = Instant::now();
    let _ = second.wait();
    let out = output_within(first, Duration::from_secs(90));
    assert!(
        killed.elapsed() < Duration::from_secs(60),
        "node 0 stopped in time"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "node 0 fails: {stderr}");
    assert!(
        stderr.contains("node 1 was lost"),
        "node 1 is named: {stderr}"
    );
    assert!(!dir.path().join("lost/final").exists());
    args.push("--resume");
    for (rank, (ok, out)) in on_nodes(&args, 2).iter().enumerate() {
        assert!(ok, "node {rank} failed to resume: {out}");
    }
    let resumed = read_tensors(&dir.path().join("lost/final/model.safetensors"));
    let diff = max_abs_diff(&full, &resumed);
    assert!(
        diff < 1e-6,
        "2 nodes killed and resumed vs uninterrupted: {diff}"
    );
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
    // Nodes started one by one, node 1 with another batch size: both refuse.
    let args = ["pretrain", "--config", cfg];
    let port = free_port();
    let other = node(&args, 1, 2, port)
        .args(["--set", "training.batch_size=4"])
        .spawn()
        .expect("node 1");
    let first = node(&args, 0, 2, port).spawn().expect("node 0");
    for (rank, child) in [first, other].into_iter().enumerate() {
        let out = child.wait_with_output().expect("wait");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "node {rank} must refuse");
        assert!(
            stderr.contains(
                "the configuration differs between the processes: rank(s) 1 against rank 0"
            ),
            "node {rank}: {stderr}"
        );
    }
    assert!(!dir.path().join("mismatch/checkpoints").exists());
}
