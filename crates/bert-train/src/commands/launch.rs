//! `bert launch`: starts N processes of a `bert` command on this machine through `mpirun`
//! (Open MPI), one rank each; and `bert cluster-check`, which shows that the processes of a
//! launch reach each other (an all-reduce, a configuration check).

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::cluster::{Cluster, fingerprint};

/// `bert launch`.
#[derive(Debug, clap::Args)]
pub struct LaunchArgs {
    /// Processes to start (ranks 0..N), all on this machine.
    #[arg(long)]
    pub nodes: usize,
    /// The MPI launcher (Open MPI's `mpirun`; on several machines run it yourself with a
    /// hostfile, see README).
    #[arg(long, default_value = "mpirun")]
    pub mpirun: PathBuf,
    /// The `bert` command every process runs, after `--`.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// Runs `mpirun -np N bert <command>`, output lines tagged with their rank; fails with the
/// launcher's exit status when a process fails (Open MPI then stops the others and names the
/// rank that failed).
pub fn run(args: &LaunchArgs) -> Result<()> {
    if args.nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    let exe = std::env::current_exe().context("the path of this bert executable")?;
    let mut mpirun = Command::new(&args.mpirun);
    mpirun
        .arg("-np")
        .arg(args.nodes.to_string())
        .args(["--oversubscribe", "--tag-output"]);
    if is_root() {
        // Open MPI refuses to start as root unless told (containers, CI).
        mpirun.arg("--allow-run-as-root");
    }
    mpirun.arg(exe).args(&args.command);
    let status = mpirun.status().with_context(|| {
        format!(
            "could not start {} (install Open MPI: apt-get install openmpi-bin)",
            args.mpirun.display()
        )
    })?;
    if !status.success() {
        bail!(
            "{} processes of `bert {}`: {status}",
            args.nodes,
            args.command.join(" ")
        );
    }
    Ok(())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// `bert cluster-check`.
#[derive(Debug, clap::Args)]
pub struct ClusterCheckArgs {
    /// All-reduce rounds.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// A text every process must agree on (e.g. a config); differing processes are named.
    #[arg(long, default_value = "")]
    pub agree_on: String,
    /// Nodes started one by one, as `[distributed]` in a config: `nodes`, `node_rank`,
    /// `coordinator` (also from `WORLD_SIZE`, `RANK`, `MASTER_ADDR`/`MASTER_PORT`).
    #[arg(long = "set", value_name = "distributed.KEY=VALUE")]
    pub set: Vec<String>,
}

/// Each round sums `rank + 1 + round` over the processes and checks the sum; then checks that
/// every process has the same `--agree-on` text.
pub fn cluster_check(args: &ClusterCheckArgs) -> Result<()> {
    let distributed = crate::config::distributed_section(&args.set)?;
    let cluster = Cluster::init(&distributed)?;
    let rounds = all_reduce_rounds(&cluster, args.rounds);
    cluster.or_abort(rounds)?;
    // A mismatch fails on every process alike.
    cluster.agree("--agree-on", fingerprint(args.agree_on.as_bytes()))?;
    println!(
        "rank {} of {} (local rank {}): {} all-reduce rounds and the agreement check passed",
        cluster.rank(),
        cluster.size(),
        cluster.local_rank(),
        args.rounds
    );
    cluster.say_goodbye();
    Ok(())
}

/// `rounds` all-reduces, each checked.
fn all_reduce_rounds(cluster: &Cluster, rounds: usize) -> Result<()> {
    let (rank, size) = (cluster.rank(), cluster.size());
    for round in 0..rounds {
        let mut value = [(rank + 1 + round) as f32];
        cluster.all_reduce_sum(&mut value);
        let want = (1..=size).map(|r| (r + round) as f32).sum::<f32>();
        if value[0] != want {
            bail!(
                "rank {rank}: round {round} summed to {}, not {want}",
                value[0]
            );
        }
    }
    Ok(())
}
