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

use std::marker::PhantomData;
use std::sync::mpsc::{Receiver, SyncSender, channel, sync_channel};
use std::thread::Scope;

use anyhow::{Context, Result, anyhow};
use bert_data::seeds;
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
}

/// One replica's micro-batches of a step.
#[derive(Debug, Clone)]
pub struct Share<T> {
    /// Its micro-batches (none for a replica left without data at the end of the last epoch).
    pub batches: Vec<T>,
    /// For a replica without batches: a batch whose gradients, multiplied by zero, stand in for
    /// its share in the all-reduce.
    pub idle: Option<T>,
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
        for batch in batches {
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

/// One replica's part of a step: its gradients ([`Work::gradients`]), summed with the other
/// replicas' (when `peer` is set), divided by `micro_batches` (the step's micro-batches on all
/// replicas), one AdamW update.
#[allow(clippy::too_many_arguments)]
pub fn replica_step<B: AutodiffBackend, W: Work<B>>(
    work: &W,
    model: W::Model,
    opt: &mut AdamW<B>,
    share: &W::Share,
    micro_batches: usize,
    peer: Option<PeerId>,
    nodes: Option<&Cluster>,
    lr: f64,
    device: &Device<B>,
) -> Result<Stepped<B, W::Model, W::Stats>> {
    let (grads, stats) = work.gradients(&model, share, device)?;
    let grads = match peer {
        Some(peer) => grads
            .all_reduce::<B::InnerBackend>(peer, ReduceOperation::Sum)
            .map_err(|e| anyhow::Error::new(AllReduceCut(format!("{e:?}"))))?,
        None => grads,
    };
    let grads = match nodes {
        Some(cluster) => all_reduce_over_ranks::<B, W::Model>(cluster, &model, grads, device),
        None => grads,
    };
    let scale = 1.0 / micro_batches.max(1) as f64;
    let (model, step) = opt.step_params(model, &grads, scale, lr);
    Ok((model, stats, step))
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
    step: u64,
    lr: f64,
    micro_batches: usize,
    share: S,
}

/// The worker replicas (devices 1..) of a data-parallel run; none with one device.
#[allow(missing_debug_implementations)]
pub struct Replicas<B: AutodiffBackend, W: Work<B>> {
    jobs: Vec<SyncSender<Job<W::Share>>>,
    results: Receiver<Result<W::Stats>>,
    seed: u64,
    backend: PhantomData<B>,
}

impl<B: AutodiffBackend, W: Work<B>> Replicas<B, W> {
    /// Starts one worker per device after the first, each with a copy of `model` and `opt`
    /// as they are now (after a resume: the checkpoint's), and registers replica 0. With
    /// several replicas, replica `r` draws its dropout masks at step `s` from a stream of its
    /// own keyed by [`seeds::dropout`]`(seed, s, r)`
    /// ([`bert_model::dropout::set_thread_seed`]), not from Burn's RNG (one per process, which
    /// the replicas would race for).
    pub fn start<'scope>(
        scope: &'scope Scope<'scope, '_>,
        devices: &[Device<B>],
        work: &'scope W,
        model: &W::Model,
        opt: &AdamW<B>,
        optimizer: &OptimizerConfig,
        seed: u64,
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
                            // Burn's RNG is one per process: each replica draws its dropout
                            // masks from a stream of its own.
                            bert_model::dropout::set_thread_seed(Some(seeds::dropout(
                                seed, job.step, rank,
                            )));
                            let (next, stats, _) = replica_step(
                                work,
                                model,
                                &mut opt,
                                &job.share,
                                job.micro_batches,
                                Some(peer),
                                None,
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
            seed,
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

    /// Step `step` on every replica: `shares[r]` is replica r's (one per device, in order),
    /// `micro_batches` counts the step's micro-batches on all of them. Hands the workers their
    /// shares, runs `shares[0]` on this thread as replica 0 ([`replica_step`] on `model`, `opt`,
    /// `device`: the caller seeds it), and returns replica 0's updated model, every replica's
    /// statistics (replica 0's first) and replica 0's optimizer statistics.
    #[allow(clippy::too_many_arguments)]
    pub fn step(
        &self,
        work: &W,
        model: W::Model,
        opt: &mut AdamW<B>,
        shares: Vec<W::Share>,
        micro_batches: usize,
        step: u64,
        lr: f64,
        device: &Device<B>,
        nodes: Option<&Cluster>,
    ) -> Result<Stepped<B, W::Model, Vec<W::Stats>>> {
        let mut shares = shares.into_iter();
        let own = shares.next().context("no share for replica 0")?;
        for (rank, (jobs, share)) in self.jobs.iter().zip(shares).enumerate() {
            jobs.send(Job {
                step,
                lr,
                micro_batches,
                share,
            })
            .ok()
            .with_context(|| format!("replica {} stopped", rank + 1))?;
        }
        if !self.jobs.is_empty() {
            bert_model::dropout::set_thread_seed(Some(seeds::dropout(self.seed, step, 0)));
        }
        let own = unpanicked("replica 0", || {
            replica_step(
                work,
                model,
                opt,
                &own,
                micro_batches,
                self.peer(),
                nodes,
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
