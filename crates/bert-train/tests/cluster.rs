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
