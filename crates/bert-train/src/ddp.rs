//! Data-parallel pretraining over several devices (`training.devices`), on Burn's collective
//! all-reduce (burn-collective, through `GradientsParams::all_reduce`): no home-made
//! communication.
//!
//! One replica per device, each on its own thread with its own copy of the weights and of the
//! AdamW state (replica 0 is the training loop's thread, which also evaluates and writes
//! checkpoints). Every step each replica runs its own micro-batches forward and backward, the
//! summed gradients are averaged over the replicas, and each replica applies the same AdamW
//! update (global-norm clipping included) to the same weights, so they stay identical.
//! `training.batch_size` is per device: a step sees `devices × accumulation × batch_size`
//! sequences, and N devices with accumulation A give the update of one device with accumulation
//! N·A (`tests/pretrain_cli.rs` checks 2 × 1 against 1 × 2).

use std::marker::PhantomData;
use std::sync::mpsc::{Receiver, SyncSender, channel, sync_channel};
use std::thread::Scope;

use anyhow::{Context, Result, anyhow};
use bert_data::pretraining::PretrainingBatch;
use bert_data::pretraining::stream::derive_seed;
use bert_model::BertForPreTraining;
use burn::collective::{CollectiveConfig, PeerId, ReduceOperation, finish_collective, register};
use burn::module::Module;
use burn::prelude::DeviceOps;
use burn::tensor::Device;
use burn::tensor::backend::{AutodiffBackend, Backend};

use crate::config::{Precision, TrainingSection};
use crate::optim::{Accumulation, AdamW, OptimizerConfig, StepStats};
use crate::pretrain::{BatchStats, forward};

/// The devices of `training.devices` (indices among the backend's devices of the default
/// device's kind), or the default device when the list is empty. An index may repeat: two
/// replicas then share a device (the CPU backend has one device; the tests run two replicas on
/// it).
pub(crate) fn devices<B: Backend>(
    default: &Device<B>,
    indices: &[usize],
) -> Result<Vec<Device<B>>> {
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

/// One replica's share of a step: its micro-batches forward and backward, the gradients
/// averaged with the other replicas' (when `peer` is set), one AdamW update.
pub(crate) fn replica_step<B: AutodiffBackend>(
    model: BertForPreTraining<B>,
    opt: &mut AdamW<B>,
    batches: &[PretrainingBatch],
    peer: Option<PeerId>,
    precision: Precision,
    lr: f64,
    device: &Device<B>,
) -> Result<(BertForPreTraining<B>, BatchStats, StepStats)> {
    let mut stats = BatchStats::default();
    let mut accumulation = Accumulation::default();
    for batch in batches {
        let (loss, s) = forward(&precision.compute_copy(&model), batch, device);
        stats.add(&s, batches.len());
        accumulation.add(&model, loss.backward());
    }
    let (grads, scale) = accumulation.take();
    let grads = match peer {
        Some(peer) => grads
            .all_reduce::<B::InnerBackend>(peer, ReduceOperation::Mean)
            .map_err(|e| anyhow!("all-reduce of the gradients failed: {e:?}"))?,
        None => grads,
    };
    let (model, step) = opt.step_params(model, &grads, scale, lr);
    Ok((model, stats, step))
}

/// A step's work for one worker replica.
struct Job {
    step: u64,
    lr: f64,
    batches: Vec<PretrainingBatch>,
}

/// The worker replicas (devices 1..) of a data-parallel run; none with one device.
pub(crate) struct Replicas<B: AutodiffBackend> {
    jobs: Vec<SyncSender<Job>>,
    results: Receiver<Result<BatchStats>>,
    backend: PhantomData<B>,
}

impl<B: AutodiffBackend> Replicas<B> {
    /// Starts one worker per device after the first, each with a copy of `model` and `opt`
    /// as they are now (after a resume: the checkpoint's), and registers replica 0.
    pub(crate) fn start<'scope>(
        scope: &'scope Scope<'scope, '_>,
        devices: &[Device<B>],
        model: &BertForPreTraining<B>,
        opt: &AdamW<B>,
        optimizer: &OptimizerConfig,
        training: &TrainingSection,
    ) -> Result<Self> {
        let (result_sender, results) = channel();
        let mut jobs = Vec::new();
        if devices.len() > 1 {
            let collective = CollectiveConfig::default().with_num_devices(devices.len());
            let (opt_step, opt_tensors) = opt.state();
            for (rank, device) in devices.iter().enumerate().skip(1) {
                let (job_sender, job_receiver) = sync_channel::<Job>(1);
                jobs.push(job_sender);
                let (model, device, collective) =
                    (model.clone(), device.clone(), collective.clone());
                let (optimizer, tensors) = (optimizer.clone(), opt_tensors.clone());
                let (precision, seed) = (training.precision, training.seed);
                let results = result_sender.clone();
                scope.spawn(move || {
                    let peer = PeerId::from(rank);
                    let run = || -> Result<()> {
                        register::<B::InnerBackend>(peer, device.clone(), collective)
                            .map_err(|e| anyhow!("replica {rank}: collective register: {e:?}"))?;
                        let mut model = model.fork(&device);
                        let mut opt = AdamW::<B>::new(optimizer);
                        opt.load_state(opt_step, tensors, &device)?;
                        while let Ok(job) = job_receiver.recv() {
                            B::seed(&device, derive_seed(&[seed, job.step, 5, rank as u64]));
                            let (next, stats, _) = replica_step(
                                model,
                                &mut opt,
                                &job.batches,
                                Some(peer),
                                precision,
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
                    if let Err(e) = run() {
                        let _ = results.send(Err(e));
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

    /// The collective id of replica 0 (the training loop's thread), `None` without data
    /// parallelism.
    pub(crate) fn peer(&self) -> Option<PeerId> {
        (!self.jobs.is_empty()).then(|| PeerId::from(0usize))
    }

    /// Hands each worker its micro-batches of step `step` (one list per worker, in order).
    pub(crate) fn send(
        &self,
        step: u64,
        lr: f64,
        shares: impl Iterator<Item = Vec<PretrainingBatch>>,
    ) -> Result<()> {
        for (rank, (jobs, batches)) in self.jobs.iter().zip(shares).enumerate() {
            jobs.send(Job { step, lr, batches })
                .ok()
                .with_context(|| format!("replica {} stopped", rank + 1))?;
        }
        Ok(())
    }

    /// The workers' statistics of the step just sent.
    pub(crate) fn receive(&self) -> Result<Vec<BatchStats>> {
        (0..self.jobs.len())
            .map(|_| {
                self.results
                    .recv()
                    .map_err(|_| anyhow!("a data-parallel replica stopped"))?
            })
            .collect()
    }
}

impl<B: AutodiffBackend> Drop for Replicas<B> {
    fn drop(&mut self) {
        if let Some(peer) = self.peer() {
            // Workers leave their loop when their job channel closes, then finish too.
            self.jobs.clear();
            let _ = finish_collective::<B::InnerBackend>(peer);
        }
    }
}
