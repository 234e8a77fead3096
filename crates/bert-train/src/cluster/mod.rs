//! The processes of a multi-node run, connected by MPI (crate feature `mpi`, Open MPI or MPICH),
//! each training on its own devices (`training.devices`). They are started either
//! - by an MPI launcher (`mpirun`, `bert launch`), each knowing its rank and the number of
//!   processes from the launcher's environment; or
//! - one by one, the same command on every machine with its own `[distributed]` `node_rank`
//!   (torchrun's model; Open MPI only): node 0 coordinates the join ([`rendezvous`]).
//!
//! MPI is the engine because burn-collective 0.21's own global level does one all-reduce per
//! process and then hangs (`scripts/collective_probe.sh`). A [`Cluster`] of one process (no
//! launcher and `distributed.nodes = 1`, or a build without `mpi`) does nothing.
//!
//! ```
//! let cluster = bert_train::cluster::Cluster::init(&Default::default()).unwrap();
//! // Not launched by MPI here: one process, rank 0.
//! assert_eq!((cluster.rank(), cluster.size()), (0, 1));
//! let mut values = [1.0f32, 2.0];
//! cluster.all_reduce_sum(&mut values);
//! assert_eq!(values, [1.0, 2.0]);
//! ```

use std::cell::RefCell;
use std::rc::{Rc, Weak};

use anyhow::{Result, bail};

use crate::config::DistributedSection;

#[cfg(feature = "mpi")]
mod rendezvous;

thread_local! {
    /// The cluster [`Cluster::init`] made on this thread, while it lives.
    static CURRENT: RefCell<Weak<Cluster>> = const { RefCell::new(Weak::new()) };
}

/// The rank, size and local rank the launcher gave this process (Open MPI's
/// `OMPI_COMM_WORLD_*`, or MPICH/PMI's `PMI_RANK`/`PMI_SIZE`), or `None` when no MPI launcher
/// started it.
pub fn launched() -> Option<(usize, usize, usize)> {
    let var = |name: &str| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
    };
    if let (Some(rank), Some(size)) = (var("OMPI_COMM_WORLD_RANK"), var("OMPI_COMM_WORLD_SIZE")) {
        return Some((rank, size, var("OMPI_COMM_WORLD_LOCAL_RANK").unwrap_or(0)));
    }
    if let (Some(rank), Some(size)) = (var("PMI_RANK"), var("PMI_SIZE")) {
        return Some((rank, size, var("MPI_LOCALRANKID").unwrap_or(0)));
    }
    None
}

/// This process's place among the processes of a run.
pub struct Cluster {
    rank: usize,
    size: usize,
    local_rank: usize,
    #[cfg(feature = "mpi")]
    mpi: Option<Mpi>,
}

/// MPI, while the run uses it; the fields drop in order.
#[cfg(feature = "mpi")]
struct Mpi {
    /// The watchdog of nodes started one by one: its goodbye goes before MPI ends.
    watchdog: Option<rendezvous::Watchdog>,
    /// The run's communicator, freed before MPI is finalised.
    world: mpi::topology::SimpleCommunicator,
    _universe: mpi::environment::Universe,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cluster(rank {} of {})", self.rank, self.size)
    }
}

impl Cluster {
    /// Joins the run's processes: the launcher's when an MPI launcher started this one, else
    /// the `distributed.nodes` nodes started one by one (joined through node 0,
    /// [`rendezvous`]); a single process otherwise. MPI is initialised once, and finalised when
    /// the cluster is dropped. Fails when a build without the `mpi` feature is one of several
    /// processes, and when the launcher's count differs from `distributed.nodes` (other than
    /// 1).
    ///
    /// The cluster becomes this thread's [`Cluster::current`] while the returned handle (or a
    /// clone) lives; calling `init` again meanwhile returns the same cluster.
    pub fn init(distributed: &DistributedSection) -> Result<Rc<Self>> {
        if let Some(current) = CURRENT.with(|c| c.borrow().upgrade()) {
            return Ok(current);
        }
        let nodes = distributed.nodes;
        let cluster = Rc::new(match launched().filter(|&(_, size, _)| size > 1) {
            Some((_, size, _)) if nodes > 1 && nodes != size => {
                bail!("the MPI launcher started {size} processes, distributed.nodes says {nodes}")
            }
            Some((_, size, _)) => Self::join(size)?,
            None if nodes > 1 => Self::rendezvous(distributed)?,
            None => Self::single(),
        });
        CURRENT.with(|c| *c.borrow_mut() = Rc::downgrade(&cluster));
        Ok(cluster)
    }

    /// This thread's cluster from [`Cluster::init`] while it lives, else a single process.
    pub fn current() -> Rc<Self> {
        CURRENT
            .with(|c| c.borrow().upgrade())
            .unwrap_or_else(|| Rc::new(Self::single()))
    }

    /// One process, rank 0 of 1.
    pub fn single() -> Self {
        Self {
            rank: 0,
            size: 1,
            local_rank: 0,
            #[cfg(feature = "mpi")]
            mpi: None,
        }
    }

    #[cfg(feature = "mpi")]
    fn join(size: usize) -> Result<Self> {
        use mpi::traits::Communicator;
        let Some(universe) = mpi::initialize() else {
            bail!("MPI was initialised twice in this process");
        };
        let world = universe.world();
        let (rank, world_size) = (world.rank() as usize, world.size() as usize);
        if world_size != size {
            bail!("MPI reports {world_size} processes, the launcher's environment {size}");
        }
        let local_rank = launched().map_or(0, |(_, _, local)| local);
        Ok(Self {
            rank,
            size,
            local_rank,
            mpi: Some(Mpi {
                watchdog: None,
                world,
                _universe: universe,
            }),
        })
    }

    #[cfg(feature = "mpi")]
    fn rendezvous(distributed: &DistributedSection) -> Result<Self> {
        let joined = rendezvous::join(distributed)?;
        // torchrun's name for the process's place on its machine (which device it takes).
        let local_rank = std::env::var("LOCAL_RANK")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        Ok(Self {
            rank: distributed.node_rank,
            size: distributed.nodes,
            local_rank,
            mpi: Some(Mpi {
                watchdog: Some(joined.watchdog),
                world: joined.world,
                _universe: joined.universe,
            }),
        })
    }

    #[cfg(not(feature = "mpi"))]
    fn join(size: usize) -> Result<Self> {
        bail!(
            "started by an MPI launcher as one of {size} processes, but this bert was built \
             without the mpi feature (cargo build --release --features mpi)"
        )
    }

    #[cfg(not(feature = "mpi"))]
    fn rendezvous(distributed: &DistributedSection) -> Result<Self> {
        bail!(
            "distributed.nodes = {}, but this bert was built without the mpi feature (cargo \
             build --release --features mpi)",
            distributed.nodes
        )
    }

    /// Makes this process's end a goodbye to the other nodes of a run started node by node:
    /// every node ends here too (the run finished, or all stop on the same error); a node that
    /// ends without one is reported lost by the others.
    pub fn say_goodbye(&self) {
        #[cfg(feature = "mpi")]
        if let Some(Mpi {
            watchdog: Some(w), ..
        }) = &self.mpi
        {
            w.say_goodbye();
        }
    }

    /// This process's rank, from 0.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The number of processes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The rank among the processes on this machine (which device a process takes).
    pub fn local_rank(&self) -> usize {
        self.local_rank
    }

    /// Whether this is rank 0, the process that evaluates and writes.
    pub fn is_primary(&self) -> bool {
        self.rank == 0
    }

    /// Replaces `values` with their sum over the processes (element by element, the same
    /// order of additions on every process).
    pub fn all_reduce_sum(&self, values: &mut [f32]) {
        #[cfg(feature = "mpi")]
        if let Some(Mpi { world, .. }) = &self.mpi {
            use mpi::collective::{CommunicatorCollectives, SystemOperation};
            let send = values.to_vec();
            world.all_reduce_into(&send[..], values, SystemOperation::sum());
        }
        let _ = values;
    }

    /// Checks that every process has the same `fingerprint` of `what` (a hash of its
    /// configuration): fails on every process, naming the ranks that differ from rank 0's.
    pub fn agree(&self, what: &str, fingerprint: u64) -> Result<()> {
        let all = self.all_gather(fingerprint);
        let differ: Vec<String> = all
            .iter()
            .enumerate()
            .filter(|(_, f)| **f != all[0])
            .map(|(rank, _)| rank.to_string())
            .collect();
        if !differ.is_empty() {
            self.say_goodbye();
            bail!(
                "{what} differs between the processes: rank(s) {} against rank 0 (every node \
                 must run the same configuration)",
                differ.join(", ")
            );
        }
        Ok(())
    }

    /// `value` of every process, by rank.
    fn all_gather(&self, value: u64) -> Vec<u64> {
        #[cfg(feature = "mpi")]
        if let Some(Mpi { world, .. }) = &self.mpi {
            use mpi::collective::CommunicatorCollectives;
            let mut all = vec![0u64; self.size];
            world.all_gather_into(&value, &mut all[..]);
            return all;
        }
        vec![value]
    }

    /// Runs `work` on rank 0, then (after a barrier) on the other ranks: for what rank 0 must
    /// create before the others read it (a run directory, a prepared corpus). A failure on rank
    /// 0 ends every rank.
    pub fn rank_zero_first<T>(&self, work: impl FnOnce() -> Result<T>) -> Result<T> {
        if self.size == 1 {
            return work();
        }
        if self.is_primary() {
            let result = work();
            let mut failed = [f32::from(u8::from(result.is_err()))];
            self.all_reduce_sum(&mut failed);
            if result.is_err() {
                self.say_goodbye();
            }
            return result;
        }
        let mut failed = [0.0f32];
        self.all_reduce_sum(&mut failed);
        if failed[0] > 0.0 {
            self.say_goodbye();
            bail!("rank 0 failed to set the run up (see its error)");
        }
        work()
    }

    /// The run's outcome on this rank: `result`, except that an error on one rank of several
    /// prints it and ends the whole run, so that no rank is left waiting in an all-reduce for
    /// one that has failed: under an MPI launcher MPI_Abort (the launcher stops every rank and
    /// names this one); for nodes started one by one this node exits and the others report it
    /// lost.
    pub fn or_abort<T>(&self, result: Result<T>) -> Result<T> {
        #[cfg(feature = "mpi")]
        if let (Err(e), Some(mpi)) = (&result, &self.mpi) {
            use mpi::topology::Communicator;
            eprintln!("error: rank {}: {e:#}", self.rank);
            if mpi.watchdog.is_some() {
                rendezvous::exit_now();
            }
            mpi.world.abort(1);
        }
        if result.is_ok() {
            self.say_goodbye();
        }
        result
    }

    /// Waits until every process gets here.
    pub fn barrier(&self) {
        #[cfg(feature = "mpi")]
        if let Some(Mpi { world, .. }) = &self.mpi {
            use mpi::collective::CommunicatorCollectives;
            world.barrier();
        }
    }
}

/// A 64-bit FNV-1a hash of `bytes` (a configuration's fingerprint for [`Cluster::agree`]).
pub fn fingerprint(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_process_is_rank_zero_of_one() {
        let cluster = Cluster::single();
        assert!(cluster.is_primary());
        cluster.say_goodbye();
        let mut v = [3.0f32];
        cluster.all_reduce_sum(&mut v);
        assert_eq!(v, [3.0]);
        cluster.agree("config", 7).expect("one process agrees");
        assert_ne!(fingerprint(b"a"), fingerprint(b"b"));
    }
}
