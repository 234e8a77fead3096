//! What a training run plugs into the [`Trainer`](super::Trainer): an [`Objective`] (the loss
//! of one micro-batch), a [`Task`] (the objective plus evaluation and how the model is
//! written), a [`DataSource`] (the micro-batches of each step) and the [`Stats`] a step reports.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, Device, Tensor};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A JSON object of metrics (`metrics.jsonl` lines, `eval.json`).
pub type MetricMap = serde_json::Map<String, serde_json::Value>;

/// What the host knows of one micro-batch (tokens, rows, counts of targets), merged over a
/// step's micro-batches and replicas. The values only the device knows (the loss, hit counts)
/// travel beside it as the [`Measured::sums`] vector, which the trainer reads once per logging
/// window and hands to these methods as `sums` (summed over the step's micro-batches).
pub trait Stats: Default + Send {
    /// Adds another micro-batch's (or replica's) statistics.
    fn merge(&mut self, other: Self);
    /// The mean loss over the `micro_batches` merged micro-batches (default: the first sum,
    /// which [`Measured::new`] makes the loss, divided by their number).
    fn loss(&self, sums: &[f64], micro_batches: usize) -> f64 {
        sums.first().copied().unwrap_or(f64::NAN) / micro_batches.max(1) as f64
    }
    /// Real (unpadded) tokens, for tokens/s.
    fn tokens(&self) -> usize;
    /// Training examples (rows), for the trainer state.
    fn examples(&self) -> usize;
    /// Fields of the `train` line of metrics.jsonl besides `loss`, `lr`, `grad_norm` and
    /// `tokens_per_second`.
    fn log_fields(&self, sums: &[f64], micro_batches: usize) -> MetricMap {
        let _ = (sums, micro_batches);
        MetricMap::new()
    }
    /// What the periodic progress line shows after the loss (e.g. ` mlm_acc 0.123`).
    fn summary(&self, sums: &[f64], micro_batches: usize) -> String {
        let _ = (sums, micro_batches);
        String::new()
    }
}

/// What an [`Objective`] gives for one micro-batch: the loss to differentiate, the values
/// summed on the device, and the host's statistics. Nothing here is read back by the step:
/// the trainer reads the sums once per logging window, so a GPU's queue never waits on the
/// host between micro-batches.
#[derive(Debug)]
pub struct Measured<B: AutodiffBackend, S> {
    /// The loss (`[1]`), differentiated.
    pub loss: Tensor<B, 1>,
    /// Values to sum over micro-batches and replicas (`[k]`, f32, not tracked): the loss and
    /// whatever else the task logs (hit counts, partial losses), in an order of the task's
    /// choosing; the [`Stats`] methods get their sums.
    pub sums: Tensor<B::InnerBackend, 1>,
    /// What the host knows (tokens, rows).
    pub stats: S,
}

impl<B: AutodiffBackend, S> Measured<B, S> {
    /// The loss, with itself as the only sum (what [`Stats::loss`]'s default reads).
    pub fn new(loss: Tensor<B, 1>, stats: S) -> Self {
        let sums = loss.clone().inner().cast(DType::F32).reshape([1]);
        Self { loss, sums, stats }
    }

    /// The loss with the given sums (`[k]`, on the loss's device).
    pub fn with_sums(loss: Tensor<B, 1>, sums: Tensor<B::InnerBackend, 1>, stats: S) -> Self {
        Self {
            loss,
            sums: sums.cast(DType::F32),
            stats,
        }
    }
}

/// The values of a sums vector on the host (one read; `what` names them in the error).
pub fn read_sums<B: Backend>(sums: Tensor<B, 1>, what: &str) -> Result<Vec<f64>> {
    sums.into_data()
        .convert::<f64>()
        .to_vec::<f64>()
        .map_err(|e| anyhow::anyhow!("cannot read the {what}: {e:?}"))
}

/// The training objective: the loss of one micro-batch. Shared by every data-parallel replica
/// (hence `Sync`); [`Trainer`](super::Trainer) runs it forward and backward, in the compute
/// precision, on each replica's micro-batches.
pub trait Objective<B: AutodiffBackend>: Sync {
    /// The model trained.
    type Model: AutodiffModule<B> + Send;
    /// One micro-batch (cheap to clone: a replica left without data at the end of an epoch
    /// runs a clone of the step's first one with its gradient multiplied by zero).
    type Batch: Clone + Send + Sync;
    /// What a micro-batch reports.
    type Stats: Stats;

    /// The loss of `batch` (differentiated), its device sums and its statistics, in training
    /// mode. It must not read tensors back to the host (see [`Measured`]).
    fn loss(
        &self,
        model: &Self::Model,
        batch: &Self::Batch,
        device: &Device<B>,
    ) -> Result<Measured<B, Self::Stats>>;
}

/// The model of an objective without autodiff, as evaluation and saving see it.
pub type InferenceModel<B, O> = <<O as Objective<B>>::Model as AutodiffModule<B>>::InnerModule;

/// Which of a run's directories a model is written to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaveKind {
    /// `checkpoints/step-N/`: the weights the run resumes from.
    Checkpoint,
    /// `best/` or `final/`: a model to use (HF layout with the tokenizer, for BERT tasks).
    Export,
}

/// Whether larger or smaller values of a metric are better.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Goal {
    /// Accuracy, F1, correlations.
    Maximize,
    /// Losses, errors.
    Minimize,
}

/// The evaluation metric that decides `best/` (and early stopping).
#[derive(Debug, Clone, PartialEq)]
pub struct BestMetric {
    /// The key in the evaluation's metrics.
    pub name: String,
    /// Its direction.
    pub goal: Goal,
}

impl BestMetric {
    /// `name`, larger is better.
    pub fn maximize(name: &str) -> Self {
        Self {
            name: name.into(),
            goal: Goal::Maximize,
        }
    }

    /// `name`, smaller is better.
    pub fn minimize(name: &str) -> Self {
        Self {
            name: name.into(),
            goal: Goal::Minimize,
        }
    }

    /// Whether `value` beats `best` (strictly; anything beats nothing).
    pub fn improves(&self, value: f64, best: Option<f64>) -> bool {
        best.is_none_or(|b| match self.goal {
            Goal::Maximize => value > b,
            Goal::Minimize => value < b,
        })
    }
}

/// A training task: its [`Objective`], its evaluation, and how its model is written and read
/// back.
pub trait Task<B: AutodiffBackend>: Objective<B> {
    /// One line on what is trained, for the log (e.g. `2 layers × 128 hidden on 361 documents`).
    fn describe(&self) -> String;

    /// Held-out metrics of the model (a JSON object), or `None` when the task has nothing to
    /// evaluate on.
    fn evaluate(
        &self,
        model: &InferenceModel<B, Self>,
        device: &Device<B>,
    ) -> Result<Option<MetricMap>>;

    /// The message printed after an evaluation (default: the metrics as JSON).
    fn eval_message(&self, metrics: &MetricMap) -> String {
        serde_json::Value::Object(metrics.clone()).to_string()
    }

    /// Writes the model into the (new, empty) directory `dir`.
    fn save(&self, model: &InferenceModel<B, Self>, dir: &Path, kind: SaveKind) -> Result<()>;

    /// Loads the weights that [`Task::save`] wrote into `dir` (a checkpoint) into `model`.
    fn load(&self, model: Self::Model, dir: &Path, device: &Device<B>) -> Result<Self::Model>;
}

/// Where the micro-batches of each optimizer step come from.
pub trait DataSource<T> {
    /// What a checkpoint records to restart the data where it stopped (the source is then
    /// rebuilt from it by its owner, see [`Trainer::data_position`](super::Trainer::data_position)).
    type Position: Serialize + DeserializeOwned + Default;

    /// The `count` micro-batches of (0-based) optimizer step `step`, in order; fewer when the
    /// data ends within the step (an epoch-bounded run's last step).
    fn next_step(&mut self, step: u64, count: usize) -> Result<Vec<T>>;

    /// The epoch the last step's batches came from.
    fn epoch(&self) -> u64;

    /// Where the data stands after the last step.
    fn position(&self) -> Self::Position;

    /// Time spent waiting for batches since the last call, for sources that prepare them on
    /// another thread (`data_wait_fraction` in metrics.jsonl); `None` when not measured.
    fn take_waited(&mut self) -> Option<Duration> {
        None
    }
}
