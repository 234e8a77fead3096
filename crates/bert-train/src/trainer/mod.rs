//! The training loop, written once: pretraining, every fine-tuning task and tasks of other
//! programs plug into it through [`Task`] and [`DataSource`].
//!
//! A run is made in three moves:
//! 1. [`RunDir::create`]: refuses to overwrite a run (or to resume nothing), creates the
//!    directory and writes the resolved `config.toml`;
//! 2. [`Trainer::new`]: resolves the devices, checks the precision, builds AdamW and, when
//!    resuming, restores the newest checkpoint (weights, moments, step, best metric, data
//!    position: [`Trainer::data_position`] hands the data position back to build the source);
//! 3. [`Trainer::fit`]: the loop below, then `final/`, `eval.json` and `loss.png`.
//!
//! ```text
//! while step < total:
//!     batches  = data.next_step(step, accumulation × devices)
//!     lr       = schedule(step)
//!     seed dropout (seed, step, rank)
//!     grads    = Σ over replicas and micro-batches of backward(loss(batch))   (all-reduce)
//!     model    = AdamW(model, clip(grads / micro-batches), lr)      (no host read so far)
//!     on logging, evaluation and save steps only: read the steps' losses and gradient norms
//!       since the last read (one transfer), stop if one is not finite
//!     log every log_every_steps; evaluate every eval_every_steps (best/, early stopping)
//!     checkpoint every save_every_steps, at the end, and before stopping (Ctrl-C, stop_after_steps)
//! ```

pub mod checkpoint;
pub mod ddp;
pub mod optim;
mod plot;
mod task;

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use bert_data::seeds;
use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

pub use checkpoint::{Metrics, checkpoint_dirs};
pub use ddp::Tally;
pub use optim::{AdamW, Decay, OptimizerConfig, OptimizerName, ScheduleConfig, StepStats, lr_at};
pub use task::{
    BestMetric, DataSource, Goal, InferenceModel, Measured, MetricMap, Objective, SaveKind, Stats,
    Task, read_sums,
};

use crate::cluster::Cluster;
use crate::config::TrainingSection;
use crate::progress::TrainingProgress;

/// A run's output directory.
#[derive(Debug, Clone)]
pub struct RunDir {
    dir: PathBuf,
    resume_from: Option<PathBuf>,
}

impl RunDir {
    /// Opens `dir` for a run: without `resume` it must have no checkpoint (a run is never
    /// overwritten), with `resume` it must have one (the newest is resumed). Creates the
    /// directory and writes `config_toml` (the resolved config) as `config.toml`.
    pub fn create(dir: &Path, resume: bool, config_toml: &str) -> Result<Self> {
        let resume_from = checkpoint::check_resume(dir, resume)?;
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        bert_model::checkpoint::write_atomically(&dir.join("config.toml"), config_toml.as_bytes())?;
        Ok(Self {
            dir: dir.to_path_buf(),
            resume_from,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The checkpoint a `--resume` continues from.
    pub fn resume_from(&self) -> Option<&Path> {
        self.resume_from.as_deref()
    }
}

/// What a checkpoint records besides the weights and the optimizer moments
/// (`trainer_state.json`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps done.
    pub step: u64,
    /// Training examples seen.
    #[serde(default)]
    pub examples: u64,
    /// The best value of the best metric so far.
    #[serde(default, alias = "best_eval_loss")]
    pub best: Option<f64>,
    /// The step it was reached at.
    #[serde(default)]
    pub best_step: Option<u64>,
    /// Evaluations since it was last improved (early stopping).
    #[serde(default)]
    pub evals_without_improvement: u64,
    /// The last evaluation's metrics.
    #[serde(default)]
    pub last_eval: serde_json::Value,
    /// The data source's position ([`DataSource::Position`]).
    #[serde(default, alias = "stream")]
    pub data: serde_json::Value,
}

/// How a run trains: the `[training]`, `[optimizer]` and `[schedule]` sections, the number of
/// optimizer steps and the metric that picks `best/`.
#[derive(Debug, Clone)]
pub struct TrainerConfig {
    /// Loop settings (accumulation, devices, precision, seed, cadences, stopping).
    pub training: TrainingSection,
    /// AdamW.
    pub optimizer: OptimizerConfig,
    /// Learning-rate schedule.
    pub schedule: ScheduleConfig,
    /// Optimizer steps of the whole run (the schedule's length).
    pub total_steps: u64,
    /// The evaluation metric of `best/` and early stopping.
    pub best: BestMetric,
    /// What the log calls the run ("pretraining", "fine-tuning").
    pub what: &'static str,
}

/// The devices of `training.devices` (see [`ddp::devices`]; on a rank of a multi-node run with
/// the list empty, the device of its local rank), checked for the compute precision. Called
/// before the data is prepared, so that a bad device list fails at once.
pub fn devices<B: AutodiffBackend>(
    default: &Device<B>,
    training: &TrainingSection,
) -> Result<Vec<Device<B>>> {
    let cluster = Cluster::current();
    let devices = if cluster.size() > 1 && training.devices.is_empty() {
        // A rank of a multi-node run takes the device of its local rank (ranks share the one
        // device of a backend that has only one, as the CPU's).
        let kind = burn::prelude::DeviceOps::to_id(default).type_id;
        let count = B::device_count(kind);
        ddp::devices::<B>(default, &[cluster.local_rank() % count.max(1)])?
    } else {
        ddp::devices::<B>(default, &training.devices)?
    };
    training.precision.check::<B>(&devices[0])?;
    Ok(devices)
}

/// A training run in progress: the model, its optimizer and the trainer state.
#[derive(Debug)]
pub struct Trainer<B: AutodiffBackend, M> {
    run: RunDir,
    config: TrainerConfig,
    devices: Vec<Device<B>>,
    model: M,
    opt: AdamW<B>,
    state: TrainerState,
    cluster: Rc<Cluster>,
}

impl<B: AutodiffBackend, M: AutodiffModule<B> + Send> Trainer<B, M> {
    /// A trainer for `model` on `devices` (replica 0, which evaluates and saves, on the first):
    /// a fresh AdamW, or the newest checkpoint of `run` when it resumes (read through
    /// `task.load`).
    pub fn new<T: Task<B, Model = M>>(
        run: RunDir,
        config: TrainerConfig,
        devices: Vec<Device<B>>,
        model: M,
        task: &T,
    ) -> Result<Self> {
        let device = devices.first().context("no device")?.clone();
        let mut opt = AdamW::<B>::new(config.optimizer.clone());
        let (model, state) = match run.resume_from() {
            Some(dir) => {
                let model = task.load(model, dir, &device)?;
                let state = checkpoint::load_state(dir, &mut opt, &model, &device)?;
                eprintln!("resumed from {} at step {}", dir.display(), state.step);
                (model, state)
            }
            None => (model, TrainerState::default()),
        };
        Ok(Self {
            run,
            config,
            devices,
            model,
            opt,
            state,
            cluster: Cluster::current(),
        })
    }

    /// Trains as one rank of `cluster`, a multi-node run (see [`crate::cluster`]; by default
    /// the trainer takes this thread's [`Cluster::current`]): every rank takes its share of
    /// each step's micro-batches (rank r the r-th run of them), the gradients are summed over
    /// the ranks, and only rank 0 evaluates and writes (metrics, checkpoints, `best/`,
    /// `final/`). One device per rank (`training.devices` at most one entry).
    pub fn with_cluster(mut self, cluster: Rc<Cluster>) -> Self {
        self.cluster = cluster;
        self
    }

    /// Where the data stood at the checkpoint resumed from (the default position for a new
    /// run).
    pub fn data_position<P: serde::de::DeserializeOwned + Default>(&self) -> Result<P> {
        if self.state.data.is_null() {
            return Ok(P::default());
        }
        serde_json::from_value(self.state.data.clone())
            .context("trainer_state.json: bad data position")
    }

    /// The state (step, best metric, …) as resumed or as the last step left it.
    pub fn state(&self) -> &TrainerState {
        &self.state
    }

    /// Trains up to `total_steps` (or until stopped) on `data`, then writes `final/`,
    /// `eval.json` (the last evaluation, when there was one) and `loss.png`. Returns the
    /// trained model; a run stopped early (Ctrl-C, `stop_after_steps`) returns it after
    /// saving a checkpoint, without `final/`.
    pub fn fit<T, D>(self, task: &T, data: &mut D) -> Result<M>
    where
        T: Task<B, Model = M>,
        D: DataSource<T::Batch>,
    {
        let Self {
            run,
            config,
            devices,
            mut model,
            mut opt,
            mut state,
            cluster,
        } = self;
        let mut run = Run {
            dir: run,
            config,
            state: &mut state,
        };
        let out = run.dir.path().to_path_buf();
        let training = run.config.training.clone();
        let total = run.config.total_steps;
        let seed = training.seed;
        let micro = training.gradient_accumulation_steps.max(1);
        let replicas_n = devices.len();
        let (rank, ranks) = (cluster.rank(), cluster.size());
        let primary = cluster.is_primary();
        // This process's micro-batches of a step; the step has `ranks` times as many.
        let per_step = micro * replicas_n;
        let device = devices[0].clone();
        let step_work = ddp::Step {
            objective: task,
            precision: training.precision,
            thread_streams: replicas_n > 1,
        };
        let mut metrics = if primary {
            Metrics::open(&out)?
        } else {
            Metrics::sink()
        };
        let interrupted = checkpoint::interrupt_flag();
        let progress = TrainingProgress::new(total, run.state.step, run.config.what);
        eprintln!(
            "{} {} ({:.1}M parameters): steps {}..{total}, {} micro-batches per step",
            run.config.what,
            task.describe(),
            model.num_params() as f64 / 1e6,
            run.state.step,
            per_step,
        );
        // What the steps compute in: the dtype of the compute copy's matrices (f32, or the half
        // type of mixed precision), reported on every train line.
        let compute_dtype = training
            .precision
            .compute_leaves(&model)
            .map_or_else(
                || optim::matrix_dtype(&model),
                |half| optim::matrix_dtype(&half),
            )
            .map_or_else(|| "none".to_string(), |d| format!("{d:?}").to_lowercase());
        let started = Instant::now();
        let (stopped, model) = std::thread::scope(|scope| -> Result<(bool, M)> {
            // Replicas 1.. on worker threads (see ddp); replica 0 is this thread.
            let replicas = ddp::Replicas::start(
                scope,
                &devices,
                &step_work,
                &model,
                &opt,
                &run.config.optimizer,
            )?;
            let mut window = (0usize, Instant::now());
            let mut pending = Pending::<B::InnerBackend, T::Stats>::default();
            while run.state.step < total {
                let step = run.state.step;
                // A step's micro-batches: rank k takes the k-th run of `per_step` of them
                // (every rank reads the same stream), replica r of it the r-th run of `micro`.
                let all = data.next_step(step, per_step * ranks)?;
                let n = all.len();
                let first = all.first().cloned();
                let batches: Vec<_> = all
                    .into_iter()
                    .skip(rank * per_step)
                    .take(per_step)
                    .collect();
                // This rank's micro-batches: what its statistics average over.
                let local = batches.len();
                // A replica left without data (the end of an epoch-bounded run) steps on a
                // copy of the first batch with its gradient multiplied by zero.
                let idle = (batches.len() < per_step).then_some(first).flatten();
                // The masks of the step's m-th micro-batch come from one seed, whichever rank
                // and replica run it.
                let shares = ddp::shares(batches, replicas_n, micro, idle, |i| {
                    seeds::dropout(seed, step, rank * per_step + i)
                });
                let lr = lr_at(
                    step,
                    total,
                    run.config.optimizer.learning_rate,
                    &run.config.schedule,
                );
                let nodes = (ranks > 1).then_some(cluster.as_ref());
                let (next, replica_stats, opt_stats) =
                    replicas.step(&step_work, model, &mut opt, shares, n, lr, &device, nodes)?;
                model = next;
                let mut tally = ddp::Tally::<B::InnerBackend, T::Stats>::default();
                for s in replica_stats {
                    tally.merge(s, &device);
                }
                run.state.step += 1;
                run.state.examples += tally.stats.examples() as u64;
                run.state.data = serde_json::to_value(data.position())?;
                window.0 += tally.stats.tokens();
                pending.push(run.state.step, tally, opt_stats, local);
                progress.step();
                let epoch = data.epoch();
                let step = run.state.step;
                let log_due = step.is_multiple_of(training.log_every_steps.max(1)) || step == total;
                let eval_due = checkpoint::due(training.eval_every_steps, step) || step == total;
                let mut stop = checkpoint::stop_requested(&interrupted, &training, step, total);
                if ranks > 1 {
                    // Every rank stops at the same step (Ctrl-C may reach them a step apart).
                    let mut flag = [f32::from(u8::from(stop))];
                    cluster.all_reduce_sum(&mut flag);
                    stop = flag[0] > 0.0;
                }
                let save_due = checkpoint::due(training.save_every_steps, step) || step == total;
                if !(log_due || eval_due || save_due || stop) {
                    // No read this step: the GPU keeps its queue.
                    continue;
                }
                // The one read of the steps since the last one; a diverged step fails here,
                // before anything is written from its weights.
                let last = pending.read(&out)?;
                progress.set_loss(last.loss);
                if log_due {
                    let secs = window.1.elapsed().as_secs_f64().max(1e-9);
                    let mut line = last.stats.log_fields(&last.sums, last.micro_batches);
                    line.insert("split".into(), "train".into());
                    line.insert("step".into(), step.into());
                    line.insert("epoch".into(), epoch.into());
                    line.insert("loss".into(), last.loss.into());
                    line.insert("lr".into(), last.lr.into());
                    line.insert("grad_norm".into(), last.grad_norm.into());
                    line.insert("compute_dtype".into(), compute_dtype.clone().into());
                    let tokens_per_second = window.0 as f64 / secs;
                    line.insert("tokens_per_second".into(), tokens_per_second.into());
                    let mut wait = String::new();
                    if let Some(waited) = data.take_waited() {
                        // Share of the window the step spent waiting for its batches.
                        let fraction = waited.as_secs_f64() / secs;
                        line.insert("data_wait_fraction".into(), fraction.into());
                        wait = format!(", data wait {:.1}%", 100.0 * fraction);
                    }
                    let loss = last.loss;
                    progress.log(|| {
                        format!(
                            "step {step}/{total} loss {loss:.4}{} lr {lr:.2e} {tokens_per_second:.0} tok/s{wait}",
                            last.stats.summary(&last.sums, last.micro_batches)
                        )
                    });
                    metrics.write(&serde_json::Value::Object(line))?;
                    window = (0, Instant::now());
                }
                let mut early_stop = false;
                if eval_due {
                    if primary {
                        let eval_start = Instant::now();
                        let evaluated =
                            run.evaluate(task, &model, epoch, &device, &mut metrics, &progress)?;
                        // tokens_per_second counts training time only.
                        window.1 += eval_start.elapsed();
                        early_stop = evaluated && run.patience_exhausted(&progress);
                    }
                    // Rank 0 decides for every rank.
                    let mut flag = [f32::from(u8::from(early_stop))];
                    cluster.all_reduce_sum(&mut flag);
                    early_stop = flag[0] > 0.0;
                }
                if (save_due || stop || early_stop) && primary {
                    run.save_checkpoint(task, &model, &opt)?;
                }
                if early_stop {
                    break;
                }
                if stop {
                    return Ok((true, model));
                }
            }
            Ok((false, model))
        })?;
        progress.finish();
        if stopped {
            eprintln!(
                "stopped: checkpoint saved at step {}; continue with --resume",
                run.state.step
            );
            return Ok(model);
        }
        if !primary {
            return Ok(model);
        }
        run.export(task, &model)?;
        eprintln!(
            "done: {} steps in {:.0}s; model in {}",
            run.state.step,
            started.elapsed().as_secs_f64(),
            out.join("final").display()
        );
        Ok(model)
    }
}

/// The steps since the last read: their values stay on the device until the next logging
/// step, evaluation or save reads them all at once ([`Pending::read`]).
struct Pending<B: Backend, S> {
    steps: Vec<PendingStep<B, S>>,
}

impl<B: Backend, S> Default for Pending<B, S> {
    fn default() -> Self {
        Self { steps: Vec::new() }
    }
}

struct PendingStep<B: Backend, S> {
    /// 1-based step number.
    step: u64,
    /// The task's sums then the gradient norm (`[k + 1]`).
    values: Tensor<B, 1>,
    stats: S,
    micro_batches: usize,
    lr: f64,
}

/// A step's values on the host.
struct ReadStep<S> {
    loss: f64,
    grad_norm: f64,
    sums: Vec<f64>,
    stats: S,
    micro_batches: usize,
    lr: f64,
}

impl<B: Backend, S: Stats> Pending<B, S> {
    fn push(
        &mut self,
        step: u64,
        tally: ddp::Tally<B, S>,
        opt: optim::StepStats<B>,
        micro_batches: usize,
    ) {
        let grad_norm = opt.grad_norm.reshape([1]);
        let values = match tally.sums {
            Some(sums) => {
                let grad_norm = grad_norm.to_device(&sums.device());
                Tensor::cat(vec![sums, grad_norm], 0)
            }
            None => grad_norm,
        };
        self.steps.push(PendingStep {
            step,
            values,
            stats: tally.stats,
            micro_batches,
            lr: opt.lr,
        });
    }

    /// Reads every pending step's values in one transfer and returns the last step's. The
    /// first step whose loss or gradient norm is not finite is an error (the divergence of
    /// [`checkpoint::diverged`], naming the run's last good checkpoint in `out`).
    fn read(&mut self, out: &Path) -> Result<ReadStep<S>> {
        let steps = std::mem::take(&mut self.steps);
        let lengths: Vec<usize> = steps.iter().map(|s| s.values.dims()[0]).collect();
        let values = task::read_sums(
            Tensor::cat(steps.iter().map(|s| s.values.clone()).collect(), 0),
            "step statistics",
        )?;
        let mut offset = 0;
        let mut last = None;
        for (s, len) in steps.into_iter().zip(lengths) {
            let mut sums = values[offset..offset + len].to_vec();
            offset += len;
            let grad_norm = sums.pop().unwrap_or(f64::NAN);
            let loss = s.stats.loss(&sums, s.micro_batches);
            // The weights of a diverged step are never saved: the last checkpoint stays the
            // last good one. A rank of a multi-node run left without data for a step has no
            // loss of its own; the gradient norm (of every rank's gradients) still checks it.
            let had_data = !sums.is_empty();
            if had_data && !loss.is_finite() {
                return Err(checkpoint::diverged(
                    &format!("loss is {loss}"),
                    s.step,
                    out,
                ));
            }
            if !grad_norm.is_finite() {
                let what = format!("gradient norm is {grad_norm}");
                return Err(checkpoint::diverged(&what, s.step, out));
            }
            last = Some(ReadStep {
                loss,
                grad_norm,
                sums,
                stats: s.stats,
                micro_batches: s.micro_batches,
                lr: s.lr,
            });
        }
        last.context("no step to read")
    }
}

/// The parts of a run the loop's helpers write to: the directory, the config and the state.
struct Run<'a> {
    dir: RunDir,
    config: TrainerConfig,
    state: &'a mut TrainerState,
}

impl Run<'_> {
    /// Evaluates replica 0's model, writes the `eval` line, and `best/` when the best metric
    /// improves. Returns whether the task evaluated at all.
    fn evaluate<B: AutodiffBackend, T: Task<B>>(
        &mut self,
        task: &T,
        model: &T::Model,
        epoch: u64,
        device: &Device<B>,
        metrics: &mut Metrics,
        progress: &TrainingProgress,
    ) -> Result<bool> {
        let inner = model.valid();
        let Some(mut m) = task.evaluate(&inner, device)? else {
            return Ok(false);
        };
        m.insert("split".into(), "eval".into());
        m.insert("step".into(), self.state.step.into());
        m.insert("epoch".into(), epoch.into());
        let line = serde_json::Value::Object(m.clone());
        metrics.write(&line)?;
        progress.say(format!(
            "eval at step {}: {}",
            self.state.step,
            task.eval_message(&m)
        ));
        let best = &self.config.best;
        let value = m
            .get(&best.name)
            .and_then(serde_json::Value::as_f64)
            .with_context(|| {
                format!(
                    "training.metric_for_best: the evaluation has no {:?}",
                    best.name
                )
            })?;
        if best.improves(value, self.state.best) {
            self.check_finite(&inner)?;
            self.state.best = Some(value);
            self.state.best_step = Some(self.state.step);
            self.state.evals_without_improvement = 0;
            let eval_json = serde_json::to_string_pretty(&line)?;
            checkpoint::write_dir(&self.dir.path().join("best"), |dir| {
                task.save(&inner, dir, SaveKind::Export)?;
                bert_model::checkpoint::write_atomically(
                    &dir.join("eval.json"),
                    eval_json.as_bytes(),
                )?;
                Ok(())
            })?;
        } else {
            self.state.evals_without_improvement += 1;
        }
        self.state.last_eval = line;
        Ok(true)
    }

    /// Fails (as a divergence) instead of writing weights that are not all finite.
    fn check_finite<B: burn::tensor::backend::Backend, N: burn::module::Module<B>>(
        &self,
        model: &N,
    ) -> Result<()> {
        if optim::all_finite(model) {
            return Ok(());
        }
        Err(checkpoint::diverged(
            "the weights are not finite",
            self.state.step,
            self.dir.path(),
        ))
    }

    /// Whether `early_stopping_patience` evaluations passed without improvement (announced).
    fn patience_exhausted(&self, progress: &TrainingProgress) -> bool {
        let Some(patience) = self.config.training.early_stopping_patience else {
            return false;
        };
        let s = &self.state;
        if s.evals_without_improvement < patience || s.step >= self.config.total_steps {
            return false;
        }
        progress.say(format!(
            "early stopping at step {}: {} has not improved on {} (step {}) for {patience} evaluations",
            s.step,
            self.config.best.name,
            s.best.unwrap_or(f64::NAN),
            s.best_step.unwrap_or(0)
        ));
        true
    }

    fn save_checkpoint<B: AutodiffBackend, T: Task<B>>(
        &self,
        task: &T,
        model: &T::Model,
        opt: &AdamW<B>,
    ) -> Result<()> {
        let inner = model.valid();
        self.check_finite(&inner)?;
        checkpoint::save_checkpoint(
            self.dir.path(),
            self.state.step,
            |dir| task.save(&inner, dir, SaveKind::Checkpoint),
            opt,
            &*self.state,
            self.config.training.keep_checkpoints,
        )?;
        Ok(())
    }

    /// `final/` (with `eval.json` when the run evaluated), the run's `eval.json`, `loss.png`.
    fn export<B: AutodiffBackend, T: Task<B>>(&self, task: &T, model: &T::Model) -> Result<()> {
        let out = self.dir.path();
        let mut eval = self.state.last_eval.clone();
        if let Some(obj) = eval.as_object_mut() {
            obj.remove("split");
        }
        let eval_text = (!eval.is_null())
            .then(|| serde_json::to_string_pretty(&eval))
            .transpose()?;
        let inner = model.valid();
        self.check_finite(&inner)?;
        checkpoint::write_dir(&out.join("final"), |dir| {
            task.save(&inner, dir, SaveKind::Export)?;
            if let Some(text) = &eval_text {
                bert_model::checkpoint::write_atomically(&dir.join("eval.json"), text.as_bytes())?;
            }
            Ok(())
        })?;
        if let Some(text) = &eval_text {
            bert_model::checkpoint::write_atomically(&out.join("eval.json"), text.as_bytes())?;
            eprintln!("dev: {eval}");
        }
        if let Err(e) = plot::loss_plot(out) {
            eprintln!("warning: no loss.png: {e:#}");
        }
        Ok(())
    }
}

/// Fails when `n` is zero: a run needs data.
pub fn require_examples(n: usize, what: &Path) -> Result<()> {
    if n == 0 {
        bail!("{}: no training examples", what.display());
    }
    Ok(())
}
