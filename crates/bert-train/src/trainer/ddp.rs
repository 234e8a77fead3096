//! Data-parallel training over several devices (`training.devices`), pretraining and
//! fine-tuning alike, on Burn's collective all-reduce (burn-collective, through
//! `GradientsParams::all_reduce`): no home-made communication.
//!
//! One replica per device, each on its own thread with its own copy of the weights and of the
//! AdamW state (replica 0 is the training loop's thread, which also evaluates and writes
//! checkpoints). Every step each replica runs its own micro-batches forward and backward (a
//! [`Work`]), the gradients are summed over the replicas and divided by the step's number of
//! micro-batches, and each replica applies the same AdamW update (global-norm clipping
//! included) to the same weights, so they stay identical. `training.batch_size` is per device:
//! a step sees `devices × accumulation × batch_size` examples, and N devices with accumulation A
//! give the update of one device with accumulation N·A (`tests/pretrain_cli.rs` and
//! `tests/finetune_cli.rs` check 2 × 1 against 1 × 2).
//!
//! Over several processes (`crate::cluster`, MPI) each process's replica 0 sums the process's
//! summed gradients with the other processes' and broadcasts the result to its own replicas
//! ([`Ranks`]).
//!
//! Dropout: the `m`-th micro-batch of a step (counted over replicas and processes) draws its
//! masks from the seed `seeds::dropout(seed, step, m)`, whoever runs it. A process with one
//! replica seeds the backend's RNG with it (the masks are drawn on the device), so N
//! processes of one device each draw the masks of one device accumulating N micro-batches; a
//! process with several replicas gives each thread a stream of its own from it (drawn on the
//! host), so those runs match each other (2 processes × 2 replicas = 1 × 2 replicas
//! accumulating 2) but not the one-replica runs, unless dropout is off.

use std::marker::PhantomData;
use std::sync::mpsc::{Receiver, SyncSender, channel, sync_channel};
use std::thread::Scope;

use anyhow::{Context, Result, anyhow, bail};
use burn::collective::{
    CollectiveConfig, PeerId, ReduceOperation, finish_collective, register, reset_collective,
};
use burn::module::{AutodiffModule, Module};
use burn::optim::GradientsParams;
use burn::prelude::DeviceOps;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Device, Tensor};

use super::optim::{self, Accumulation, AdamW, OptimizerConfig, StepStats};
use super::task::{Objective, Stats};
use crate::cluster::Cluster;
use crate::config::Precision;

/// The devices of `training.devices` (indices among the backend's devices of the default
/// device's kind), or the default device when the list is empty. An index may repeat: two
/// replicas then share a device (the CPU backend has one device; the tests run two replicas on
/// it).
pub fn devices<B: Backend>(default: &Device<B>, indices: &[usize]) -> Result<Vec<Device<B>>> {
    if indices.is_empty() {
        return Ok(vec![default.clone()]);
    }
    let kind = default.to_id().type_id;
    let count = B::device_count(kind);
    indices
        .iter()
        .map(|&i| match u16::try_from(i) {
            Ok(index) if i < count => Ok(Device::<B>::from_id(
                burn::tensor::backend::DeviceId::new(kind, index),
            )),
            _ => Err(anyhow!(
                "training.devices: there is no device {i} (this backend sees {count}: 0..{count})"
            )),
        })
        .collect()
}

/// What every replica does with its share of a step: the forward and backward passes of its
/// micro-batches through an [`Objective`], in the compute precision.
pub trait Work<B: AutodiffBackend>: Sync {
    /// The model trained.
    type Model: AutodiffModule<B> + Send;
    /// One replica's micro-batches of a step.
    type Share: Send;
    /// What the training loop reports of them (losses, counts).
    type Stats: Send;

    /// The gradients of the micro-batches of `share`, summed (not averaged), and their
    /// statistics. An empty share (a replica left without data at the end of the last epoch)
    /// gives zero gradients for the same parameters, so the all-reduce still pairs up.
    fn gradients(
        &self,
        model: &Self::Model,
        share: &Self::Share,
        device: &Device<B>,
    ) -> Result<(GradientsParams, Self::Stats)>;
}

/// An [`Objective`] run in a compute precision: the [`Work`] of the trainer's replicas.
#[derive(Debug)]
pub struct Step<'a, O> {
    /// The loss of a micro-batch.
    pub objective: &'a O,
    /// f32, or the half type of mixed precision ([`Precision::compute_leaves`]).
    pub precision: Precision,
    /// Where a micro-batch's dropout seed ([`Share::dropout`]) goes: `false` seeds the
    /// backend's RNG (one replica in the process: the masks are drawn on the device), `true`
    /// this thread's own stream ([`bert_model::dropout::set_thread_seed`]: several replicas in
    /// one process, which would race for Burn's one RNG; the masks are drawn on the host). The
    /// two draw different masks from the same seed.
    pub thread_streams: bool,
}

/// One replica's micro-batches of a step.
#[derive(Debug, Clone)]
pub struct Share<T> {
    /// Its micro-batches (none for a replica left without data at the end of the last epoch).
    pub batches: Vec<T>,
    /// For a replica without batches: a batch whose gradients, multiplied by zero, stand in for
    /// its share in the all-reduce.
    pub idle: Option<T>,
    /// The dropout seed of each micro-batch (of `idle` when there are none); empty: the masks
    /// come from wherever the RNG stands.
    pub dropout: Vec<u64>,
}

/// This process's micro-batches of a step split among its `replicas`: replica r takes the
/// r-th run of `micro` of them; a replica left without any steps on `idle`. Local micro-batch
/// `i` (counted as if every replica had a full run) gets the dropout seed `dropout(i)`, so that
/// a micro-batch's masks depend on its place in the step, not on the replica that runs it.
pub fn shares<T: Clone>(
    batches: Vec<T>,
    replicas: usize,
    micro: usize,
    idle: Option<T>,
    dropout: impl Fn(usize) -> u64,
) -> Vec<Share<T>> {
    let micro = micro.max(1);
    let mut shares: Vec<Share<T>> = (0..replicas.max(1))
        .map(|_| Share {
            batches: Vec::new(),
            idle: None,
            dropout: Vec::new(),
        })
        .collect();
    for (i, batch) in batches.into_iter().enumerate() {
        if let Some(share) = shares.get_mut(i / micro) {
            share.batches.push(batch);
            share.dropout.push(dropout(i));
        }
    }
    for (r, share) in shares.iter_mut().enumerate() {
        if share.batches.is_empty() {
            share.idle = idle.clone();
            share.dropout.push(dropout(r * micro));
        }
    }
    shares
}

/// A replica's statistics of a step: the host's, and the device sums of its micro-batches
/// ([`Measured::sums`](super::task::Measured), `None` for a replica without batches), not
/// read.
#[derive(Debug, Default)]
pub struct Tally<B: Backend, S> {
    /// The sums, on the replica's device.
    pub sums: Option<Tensor<B, 1>>,
    /// The host's statistics.
    pub stats: S,
}

impl<B: Backend, S: Stats> Tally<B, S> {
    /// Adds `other` (from any device: its sums are moved to `device`).
    pub fn merge(&mut self, other: Self, device: &Device<B>) {
        self.stats.merge(other.stats);
        if let Some(sums) = other.sums {
            let sums = sums.to_device(device);
            self.sums = Some(match self.sums.take() {
                Some(s) => s + sums,
                None => sums,
            });
        }
    }
}

impl<B: AutodiffBackend, O: Objective<B>> Work<B> for Step<'_, O> {
    type Model = O::Model;
    type Share = Share<O::Batch>;
    type Stats = Tally<B::InnerBackend, O::Stats>;

    fn gradients(
        &self,
        model: &O::Model,
        share: &Share<O::Batch>,
        device: &Device<B>,
    ) -> Result<(GradientsParams, Self::Stats)> {
        let mut tally = Tally::<B::InnerBackend, O::Stats>::default();
        let mut accumulation = Accumulation::default();
        let idle = share.batches.is_empty();
        let batches: Vec<&O::Batch> = if idle {
            share.idle.iter().collect()
        } else {
            share.batches.iter().collect()
        };
        if batches.is_empty() {
            return Ok((accumulation.take().0, tally));
        }
        // The half copy is cast once per step and differentiated as leaves of its own; each
        // micro-batch's gradients are cast back to f32 and summed into the master's.
        let half = self.precision.compute_leaves(model);
        for (k, batch) in batches.into_iter().enumerate() {
            if let Some(&seed) = share.dropout.get(k) {
                if self.thread_streams {
                    bert_model::dropout::set_thread_seed(Some(seed));
                } else {
                    B::seed(device, seed);
                }
            }
            let compute = half.as_ref().unwrap_or(model);
            let measured = self.objective.loss(compute, batch, device)?;
            let loss = if idle {
                // A stand-in for the all-reduce: zero gradients, no statistics.
                measured.loss * 0.0
            } else {
                let sums = measured.sums;
                tally.merge(
                    Tally {
                        sums: Some(sums),
                        stats: measured.stats,
                    },
                    device,
                );
                measured.loss
            };
            match &half {
                None => accumulation.add(model, loss.backward()),
                Some(leaves) => {
                    let grads = GradientsParams::from_grads(loss.backward(), leaves);
                    accumulation.add_params(model, optim::f32_gradients(model, grads));
                }
            }
        }
        Ok((accumulation.take().0, tally))
    }
}

/// What a step gives: the updated model, the statistics of its micro-batches (`S`) and the
/// optimizer's (gradient norm, learning rate).
pub type Stepped<B, M, S> = (M, S, StepStats<<B as AutodiffBackend>::InnerBackend>);

/// Where a replica's summed gradients go past its process.
#[derive(Debug, Clone, Copy)]
pub enum Ranks<'a> {
    /// Nowhere: a run of one process.
    Alone,
    /// Replica 0 of one process of several: sums the process's gradients with the other
    /// processes' over MPI, then hands the result to the process's other replicas.
    Lead(&'a Cluster),
    /// Another replica of one process of several: receives replica 0's sum.
    Follow,
}

/// One replica's part of a step: its gradients ([`Work::gradients`]), summed with the other
/// replicas' of the process (when `peer` is set) and with the other processes' (`ranks`),
/// divided by `micro_batches` (the step's micro-batches on all replicas of all processes), one
/// optimizer update.
#[allow(clippy::too_many_arguments)]
pub fn replica_step<B: AutodiffBackend, W: Work<B>>(
    work: &W,
    model: W::Model,
    opt: &mut AdamW<B>,
    share: &W::Share,
    micro_batches: usize,
    peer: Option<PeerId>,
    ranks: Ranks<'_>,
    lr: f64,
    device: &Device<B>,
) -> Result<Stepped<B, W::Model, W::Stats>> {
    let (grads, stats) = work.gradients(&model, share, device)?;
    let cut = |e| anyhow::Error::new(AllReduceCut(format!("{e:?}")));
    let grads = match peer {
        Some(peer) => grads
            .all_reduce::<B::InnerBackend>(peer, ReduceOperation::Sum)
            .map_err(cut)?,
        None => grads,
    };
    let grads = match (ranks, peer) {
        (Ranks::Alone, _) => grads,
        (Ranks::Lead(cluster), None) => {
            all_reduce_over_ranks::<B, W::Model>(cluster, &model, grads, device)
        }
        (Ranks::Lead(cluster), Some(peer)) => {
            let summed = all_reduce_over_ranks::<B, W::Model>(cluster, &model, grads, device);
            broadcast::<B, W::Model>(peer, &model, summed, true).map_err(cut)?
        }
        (Ranks::Follow, Some(peer)) => {
            broadcast::<B, W::Model>(peer, &model, grads, false).map_err(cut)?
        }
        (Ranks::Follow, None) => bail!("a following replica without a collective peer"),
    };
    let scale = 1.0 / micro_batches.max(1) as f64;
    let (model, step) = opt.step_params(model, &grads, scale, lr);
    Ok((model, stats, step))
}

/// Replica 0's `grads` on every replica of the process (burn-collective's broadcast, one
/// tensor per parameter in the model's order): `lead` sends its own, the others receive in
/// place of theirs.
fn broadcast<B: AutodiffBackend, M: AutodiffModule<B>>(
    peer: PeerId,
    model: &M,
    mut grads: GradientsParams,
    lead: bool,
) -> std::result::Result<GradientsParams, burn::collective::CollectiveError> {
    struct Send<'a> {
        peer: PeerId,
        lead: bool,
        grads: &'a mut GradientsParams,
        failed: Option<burn::collective::CollectiveError>,
    }
    impl<B: AutodiffBackend> burn::module::ModuleVisitor<B> for Send<'_> {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<B, D>>) {
            if self.failed.is_some() {
                return;
            }
            let Some(grad) = self.grads.remove::<B::InnerBackend, D>(param.id) else {
                return;
            };
            let sent = self.lead.then(|| grad.into_primitive().tensor());
            match burn::collective::broadcast::<B::InnerBackend>(self.peer, sent) {
                Ok(received) => self.grads.register::<B::InnerBackend, D>(
                    param.id,
                    Tensor::from_primitive(burn::tensor::TensorPrimitive::Float(received)),
                ),
                Err(e) => self.failed = Some(e),
            }
        }
    }
    let mut send = Send {
        peer,
        lead,
        grads: &mut grads,
        failed: None,
    };
    model.visit(&mut send);
    match send.failed {
        Some(e) => Err(e),
        None => Ok(grads),
    }
}

/// The sum of `grads` over the ranks of `cluster` (MPI, through the host: one transfer of every
/// gradient per step), in the order the model lists its parameters, which every rank shares.
fn all_reduce_over_ranks<B: AutodiffBackend, M: AutodiffModule<B>>(
    cluster: &Cluster,
    model: &M,
    mut grads: GradientsParams,
    device: &Device<B>,
) -> GradientsParams {
    struct Take<'a, B: AutodiffBackend> {
        grads: &'a mut GradientsParams,
        flat: Vec<f32>,
        taken: Vec<(burn::module::ParamId, Vec<usize>)>,
        backend: PhantomData<B>,
    }
    impl<B: AutodiffBackend> burn::module::ModuleVisitor<B> for Take<'_, B> {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<B, D>>) {
            if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
                let shape = g.dims().to_vec();
                let values = g.cast(burn::tensor::DType::F32).into_data();
                self.flat.extend(values.iter::<f32>());
                self.taken.push((param.id, shape));
            }
        }
    }
    struct Give<'a, B: AutodiffBackend> {
        grads: &'a mut GradientsParams,
        flat: &'a [f32],
        taken: &'a [(burn::module::ParamId, Vec<usize>)],
        next: usize,
        offset: usize,
        device: &'a Device<B>,
    }
    impl<B: AutodiffBackend> burn::module::ModuleVisitor<B> for Give<'_, B> {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<B, D>>) {
            let Some((id, shape)) = self.taken.get(self.next) else {
                return;
            };
            if *id != param.id {
                return;
            }
            let n: usize = shape.iter().product();
            let values = self.flat[self.offset..self.offset + n].to_vec();
            let data = burn::tensor::TensorData::new(values, shape.clone());
            let inner = Tensor::<B::InnerBackend, D>::from_data(data, self.device);
            self.grads.register::<B::InnerBackend, D>(param.id, inner);
            self.next += 1;
            self.offset += n;
        }
    }
    let mut take = Take::<B> {
        grads: &mut grads,
        flat: Vec::new(),
        taken: Vec::new(),
        backend: PhantomData,
    };
    model.visit(&mut take);
    let (mut flat, taken) = (take.flat, take.taken);
    cluster.all_reduce_sum(&mut flat);
    model.visit(&mut Give::<B> {
        grads: &mut grads,
        flat: &flat,
        taken: &taken,
        next: 0,
        offset: 0,
        device,
    });
    grads
}

/// An all-reduce that ended without a result: another replica failed and the collective was
/// reset, or the collective broke. The failing replica's own error says why.
#[derive(Debug, thiserror::Error)]
#[error("the all-reduce of the gradients was cut off ({0})")]
pub struct AllReduceCut(String);

fn is_cut(e: &anyhow::Error) -> bool {
    e.downcast_ref::<AllReduceCut>().is_some()
}

/// Runs `f`, turning a panic into an error with its message.
fn unpanicked<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".into());
        Err(anyhow!("{what} panicked: {message}"))
    })
}

/// A step's work for one worker replica.
struct Job<S> {
    lr: f64,
    micro_batches: usize,
    share: S,
    /// Whether the process is one of several ([`Ranks::Follow`]).
    follow: bool,
}

/// The worker replicas (devices 1..) of a data-parallel run; none with one device.
#[allow(missing_debug_implementations)]
pub struct Replicas<B: AutodiffBackend, W: Work<B>> {
    jobs: Vec<SyncSender<Job<W::Share>>>,
    results: Receiver<Result<W::Stats>>,
    backend: PhantomData<B>,
}

impl<B: AutodiffBackend, W: Work<B>> Replicas<B, W> {
    /// Starts one worker per device after the first, each with a copy of `model` and `opt`
    /// as they are now (after a resume: the checkpoint's), and registers replica 0. Each
    /// micro-batch's dropout masks come from its share's seeds ([`Share::dropout`]).
    pub fn start<'scope>(
        scope: &'scope Scope<'scope, '_>,
        devices: &[Device<B>],
        work: &'scope W,
        model: &W::Model,
        opt: &AdamW<B>,
        optimizer: &OptimizerConfig,
    ) -> Result<Self> {
        let (result_sender, results) = channel();
        let mut jobs = Vec::new();
        if devices.len() > 1 {
            let collective = CollectiveConfig::default().with_num_devices(devices.len());
            let (opt_step, opt_tensors) = opt.state();
            for (rank, device) in devices.iter().enumerate().skip(1) {
                let (job_sender, job_receiver) = sync_channel::<Job<W::Share>>(1);
                jobs.push(job_sender);
                let (model, device, collective) =
                    (model.clone(), device.clone(), collective.clone());
                let (optimizer, tensors) = (optimizer.clone(), opt_tensors.clone());
                let results = result_sender.clone();
                scope.spawn(move || {
                    let peer = PeerId::from(rank);
                    let run = || -> Result<()> {
                        register::<B::InnerBackend>(peer, device.clone(), collective)
                            .map_err(|e| anyhow!("replica {rank}: collective register: {e:?}"))?;
                        let mut model = model.fork(&device);
                        let mut opt = AdamW::<B>::new(optimizer);
                        opt.load_state(opt_step, tensors, &model, &device)?;
                        while let Ok(job) = job_receiver.recv() {
                            let ranks = if job.follow {
                                Ranks::Follow
                            } else {
                                Ranks::Alone
                            };
                            let (next, stats, _) = replica_step(
                                work,
                                model,
                                &mut opt,
                                &job.share,
                                job.micro_batches,
                                Some(peer),
                                ranks,
                                job.lr,
                                &device,
                            )?;
                            model = next;
                            if results.send(Ok(stats)).is_err() {
                                break;
                            }
                        }
                        finish_collective::<B::InnerBackend>(peer)
                            .map_err(|e| anyhow!("replica {rank}: {e:?}"))
                    };
                    if let Err(e) = unpanicked(&format!("replica {rank}"), run) {
                        // Wake every replica waiting for this one in an all-reduce: the run
                        // ends with this error (see `Replicas::step`).
                        reset_collective::<B::InnerBackend>();
                        let _ =
                            results.send(Err(e.context(format!("data-parallel replica {rank}"))));
                    }
                });
            }
            register::<B::InnerBackend>(PeerId::from(0usize), devices[0].clone(), collective)
                .map_err(|e| anyhow!("replica 0: collective register: {e:?}"))?;
        }
        Ok(Self {
            jobs,
            results,
            backend: PhantomData,
        })
    }

    /// The error a data-parallel step ends with when replica 0's part failed with `own`:
    /// replica 0's own failure, or (when its all-reduce was cut off by another replica's
    /// failure) that replica's error. Resets the collective first, so that no replica stays
    /// blocked in an all-reduce.
    fn first_failure(&self, own: anyhow::Error) -> anyhow::Error {
        reset_collective::<B::InnerBackend>();
        if !is_cut(&own) {
            return own.context("data-parallel replica 0");
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match self.results.recv_timeout(left) {
                Ok(Err(e)) if !is_cut(&e) => return e,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        own
    }

    /// The collective id of replica 0 (the training loop's thread), `None` without data
    /// parallelism.
    fn peer(&self) -> Option<PeerId> {
        (!self.jobs.is_empty()).then(|| PeerId::from(0usize))
    }

    /// A step on every replica: `shares[r]` is replica r's (one per device, in order),
    /// `micro_batches` counts the step's micro-batches on all of them (and on all processes).
    /// Hands the workers their shares, runs `shares[0]` on this thread as replica 0
    /// ([`replica_step`] on `model`, `opt`, `device`), summing over the processes of `nodes`
    /// when set, and returns replica 0's updated model, every replica's statistics (replica
    /// 0's first) and replica 0's optimizer statistics.
    #[allow(clippy::too_many_arguments)]
    pub fn step(
        &self,
        work: &W,
        model: W::Model,
        opt: &mut AdamW<B>,
        shares: Vec<W::Share>,
        micro_batches: usize,
        lr: f64,
        device: &Device<B>,
        nodes: Option<&Cluster>,
    ) -> Result<Stepped<B, W::Model, Vec<W::Stats>>> {
        let mut shares = shares.into_iter();
        let own = shares.next().context("no share for replica 0")?;
        for (rank, (jobs, share)) in self.jobs.iter().zip(shares).enumerate() {
            jobs.send(Job {
                lr,
                micro_batches,
                share,
                follow: nodes.is_some(),
            })
            .ok()
            .with_context(|| format!("replica {} stopped", rank + 1))?;
        }
        let ranks = nodes.map_or(Ranks::Alone, Ranks::Lead);
        let own = unpanicked("replica 0", || {
            replica_step(
                work,
                model,
                opt,
                &own,
                micro_batches,
                self.peer(),
                ranks,
                lr,
                device,
            )
        });
        let (model, own_stats, step_stats) = match own {
            Ok(done) => done,
            Err(e) if self.jobs.is_empty() => return Err(e),
            Err(e) => return Err(self.first_failure(e)),
        };
        let mut stats = vec![own_stats];
        for _ in &self.jobs {
            stats.push(
                self.results
                    .recv()
                    .map_err(|_| anyhow!("a data-parallel replica stopped"))??,
            );
        }
        Ok((model, stats, step_stats))
    }
}

impl<B: AutodiffBackend, W: Work<B>> Drop for Replicas<B, W> {
    fn drop(&mut self) {
        if let Some(peer) = self.peer() {
            // Workers leave their loop when their job channel closes, then finish too.
            self.jobs.clear();
            bert_model::dropout::set_thread_seed(None);
            let _ = finish_collective::<B::InnerBackend>(peer);
        }
    }
}
