//! `bert finetune`, `bert evaluate` and `bert predict` for the four task kinds: sequence
//! classification (and regression), token classification, extractive question answering and
//! multiple choice.
//!
//! Fine-tuning starts from an HF directory or Hub id (`model.init_from`): the encoder is loaded
//! and the task head is new (a partial load, listed in the log). One loop ([`fit`]) serves every
//! task: a seeded order per epoch, micro-batches padded to their longest row, gradient
//! accumulation, data parallelism over `training.devices` (crate::ddp), AdamW with global-norm
//! clipping and the warmup/decay schedule, evaluation every
//! `eval_every_steps`, `best/` by the task's main metric (optional early stopping), checkpoints
//! with exact `--resume`, Ctrl-C saves. A run writes `config.toml`, `metrics.jsonl`,
//! `loss.png`, `eval.json` and `final/` (HF layout with the tokenizer and `id2label`).

mod choice;
mod qa;
mod sequence;
mod token;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use bert_data::pretraining::stream::derive_seed;
use bert_data::{BertTokenizer, Padding, Truncation, pad_rows};
use bert_model::checkpoint::write_atomically;
use bert_model::{BertConfig, BertInput, LoadOptions, PretrainedBert};
use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Device, ElementConversion, Int, Tensor, TensorData};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::backend::BackendKind;
use crate::config::{self, ModelSection, OutputSection, TrainingSection};
use crate::optim::{Accumulation, AdamW, OptimizerConfig, ScheduleConfig, lr_at};
use crate::rundir;

/// `task.kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TaskKind {
    /// One label (or score) per text or text pair.
    SequenceClassification,
    /// One tag per word (NER).
    TokenClassification,
    /// An answer span in a context (SQuAD).
    QuestionAnswering,
    /// One of several continuations (SWAG, COPA, CommonsenseQA).
    MultipleChoice,
}

impl TaskKind {
    /// The HF architecture a run of this kind writes.
    pub fn architecture(self) -> &'static str {
        match self {
            Self::SequenceClassification => "BertForSequenceClassification",
            Self::TokenClassification => "BertForTokenClassification",
            Self::QuestionAnswering => "BertForQuestionAnswering",
            Self::MultipleChoice => "BertForMultipleChoice",
        }
    }

    /// The kind of an HF architecture name.
    pub fn from_architecture(name: &str) -> Option<Self> {
        [
            Self::SequenceClassification,
            Self::TokenClassification,
            Self::QuestionAnswering,
            Self::MultipleChoice,
        ]
        .into_iter()
        .find(|k| k.architecture() == name)
    }
}

/// `[task]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSection {
    /// `sequence-classification`, `token-classification`, `question-answering` or
    /// `multiple-choice`.
    pub kind: TaskKind,
    /// Training file: TSV/CSV/JSONL (classification), CoNLL/JSONL (tokens), SQuAD JSON (QA),
    /// JSONL/COPA XML/CommonsenseQA JSONL (multiple choice).
    pub train_file: PathBuf,
    /// Dev file, same format.
    pub valid_file: PathBuf,
    /// Text column (sequence classification).
    #[serde(default = "d::text")]
    pub text_column: String,
    /// Second text column of pairs.
    #[serde(default = "d::text_pair")]
    pub text_pair_column: String,
    /// Label column.
    #[serde(default = "d::label")]
    pub label_column: String,
    /// Whether TSV/CSV files have a header (else columns are named by index).
    #[serde(default = "d::yes")]
    pub header: bool,
    /// Labels in id order (default: sorted labels of the training file; tags with `O` first).
    #[serde(default)]
    pub labels: Option<Vec<String>>,
    /// One real-valued target (STS-B).
    #[serde(default)]
    pub regression: bool,
    /// Longest input, specials included (default 128; 384 for question answering).
    #[serde(default)]
    pub max_length: Option<usize>,
    /// Question answering: tokens shared by consecutive windows of a long context.
    #[serde(default = "d::doc_stride")]
    pub doc_stride: usize,
    /// Question answering: longest answer, in tokens.
    #[serde(default = "d::max_answer_length")]
    pub max_answer_length: usize,
    /// Question answering: start and end candidates considered per window.
    #[serde(default = "d::n_best")]
    pub n_best: usize,
    /// Use only the first N training examples (questions for QA).
    #[serde(default)]
    pub max_train_examples: Option<usize>,
    /// Use only the first N dev examples.
    #[serde(default)]
    pub max_valid_examples: Option<usize>,
}

mod d {
    pub fn text() -> String {
        "text".into()
    }
    pub fn text_pair() -> String {
        "text_pair".into()
    }
    pub fn label() -> String {
        "label".into()
    }
    pub fn yes() -> bool {
        true
    }
    pub fn doc_stride() -> usize {
        128
    }
    pub fn max_answer_length() -> usize {
        30
    }
    pub fn n_best() -> usize {
        20
    }
}

impl TaskSection {
    /// `max_length` or the kind's default.
    pub fn max_length(&self) -> usize {
        self.max_length.unwrap_or(match self.kind {
            TaskKind::QuestionAnswering => 384,
            _ => 128,
        })
    }
}

/// A fine-tuning run config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinetuneConfig {
    /// `init_from` is required.
    #[serde(default)]
    pub model: ModelSection,
    /// The task and its files.
    pub task: TaskSection,
    /// AdamW.
    #[serde(default)]
    pub optimizer: OptimizerConfig,
    /// Schedule.
    #[serde(default)]
    pub schedule: ScheduleConfig,
    /// Loop.
    #[serde(default)]
    pub training: TrainingSection,
    /// Results.
    pub output: OutputSection,
}

/// Options of `bert finetune`.
#[derive(Debug, Clone, clap::Args)]
pub struct FinetuneArgs {
    /// Run config (TOML).
    #[arg(long)]
    pub config: PathBuf,
    /// Override a config value: `--set training.epochs=2`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Continue the run in output.dir from its latest checkpoint.
    #[arg(long)]
    pub resume: bool,
}

/// Options of `bert evaluate`.
#[derive(Debug, Clone, clap::Args)]
pub struct EvaluateArgs {
    /// A fine-tuned model directory (HF layout, e.g. a run's `final/`) or Hub id.
    #[arg(long)]
    pub model: PathBuf,
    /// The run config whose `task.valid_file` is evaluated.
    #[arg(long)]
    pub config: PathBuf,
    /// Override a config value: `--set task.valid_file=dev.tsv`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Where to write the metrics (default: `<output.dir>/evaluate.json`).
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// cpu, wgpu or cuda (default: training.backend, else the best compiled in).
    #[arg(long)]
    pub backend: Option<String>,
}

/// Options of `bert predict`.
#[derive(Debug, Clone, clap::Args)]
pub struct PredictArgs {
    /// A fine-tuned model directory (its config.json names the task head) or Hub id.
    #[arg(long)]
    pub model: PathBuf,
    /// JSONL: `{"text", "text_pair"?}` (classification), `{"text"}` or `{"tokens"}` (tokens),
    /// `{"question", "context"}` (QA), `{"context", "choices"}` (multiple choice).
    #[arg(long)]
    pub input: PathBuf,
    /// JSONL output, one line per input line.
    #[arg(long)]
    pub output: PathBuf,
    /// Rows per forward pass.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Longest input (default: 384 for QA, else 512 or the model's position limit).
    #[arg(long)]
    pub max_length: Option<usize>,
    /// QA: tokens shared by consecutive windows (default: 128, at most a third of the length).
    #[arg(long)]
    pub doc_stride: Option<usize>,
    /// Best labels (classification) or answers (QA) per line.
    #[arg(long, default_value_t = 1)]
    pub top_k: usize,
    /// QA: start and end positions considered per window (as `task.n_best` when training).
    #[arg(long, default_value_t = 20)]
    pub n_best: usize,
    /// QA: longest answer, in tokens (as `task.max_answer_length` when training).
    #[arg(long, default_value_t = 30)]
    pub max_answer_length: usize,
    /// cpu, wgpu or cuda (default: the best compiled in).
    #[arg(long)]
    pub backend: Option<String>,
}

/// What every task needs to prepare its data and build its model.
pub(crate) struct Setup {
    /// The resolved run config.
    pub config: FinetuneConfig,
    /// The model directory the run starts from.
    pub init_dir: PathBuf,
    /// Its tokenizer, as stored (saved with the results).
    pub tokenizer: BertTokenizer,
    /// The same, truncating to `task.max_length` (longest first).
    pub truncating: BertTokenizer,
    /// The model config before the head's labels are set.
    pub bert_config: BertConfig,
    /// The checkpoint `--resume` continues from.
    pub resume_from: Option<PathBuf>,
}

impl Setup {
    /// Pad id.
    pub fn pad(&self) -> u32 {
        self.tokenizer.special_tokens().pad
    }
}

/// Keeps the first `limit` items.
pub(crate) fn first<T>(mut items: Vec<T>, limit: Option<usize>) -> Vec<T> {
    if let Some(n) = limit {
        items.truncate(n);
    }
    items
}

/// Pads rows of `(ids, type ids)` to the longest one: the model input and the padded length.
pub(crate) fn input_of<'a, B: Backend>(
    rows: impl IntoIterator<Item = (&'a [u32], &'a [u32])>,
    pad: u32,
    device: &Device<B>,
) -> (BertInput<B>, usize) {
    let rows: Vec<(&[u32], &[u32])> = rows.into_iter().collect();
    let masks: Vec<Vec<u32>> = rows.iter().map(|r| vec![1; r.0.len()]).collect();
    let padded = pad_rows(
        rows.iter()
            .zip(&masks)
            .map(|((ids, types), m)| (*ids, *types, m.as_slice())),
        pad,
        Padding::default(),
    );
    (
        bert_data::tensors::bert_input(&padded, device),
        padded.seq_len,
    )
}

/// Class ids as a `[n]` tensor.
pub(crate) fn targets<B: Backend>(ids: Vec<i64>, device: &Device<B>) -> Tensor<B, 1, Int> {
    let n = ids.len();
    Tensor::from_data(TensorData::new(ids, [n]), device)
}

/// A tensor's values on the host.
pub(crate) fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Result<Vec<f32>> {
    t.into_data()
        .convert::<f32>()
        .to_vec()
        .map_err(|e| anyhow::anyhow!("{e:?}"))
}

/// Index of the largest value.
pub(crate) fn argmax(v: &[f32]) -> usize {
    (0..v.len())
        .max_by(|&a, &b| v[a].total_cmp(&v[b]))
        .unwrap_or(0)
}

/// Softmax of one row.
pub(crate) fn softmax(v: &[f32]) -> Vec<f32> {
    let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = v.iter().map(|x| (x - max).exp()).collect();
    let sum: f32 = e.iter().sum();
    e.into_iter().map(|x| x / sum).collect()
}

/// One micro-batch's loss and its number of real tokens.
pub(crate) struct BatchLoss<B: Backend> {
    pub loss: Tensor<B, 1>,
    pub tokens: usize,
}

/// The fine-tuning state a checkpoint records (the data position follows from `step`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct FinetuneState {
    step: u64,
    best: Option<f64>,
    best_step: Option<u64>,
    evals_without_improvement: u64,
    last_eval: serde_json::Value,
}

/// Whether larger values of a metric are better.
fn higher_is_better(metric: &str) -> bool {
    !(metric.contains("loss") || metric == "mse")
}

/// The training loop shared by every task. `lengths` are the training rows' token counts
/// (a multiple-choice row: its longest pair); `loss` computes one micro-batch from training row
/// indices; `evaluate` returns the dev metrics (a JSON object) of the inference model.
#[allow(clippy::too_many_arguments)]
pub(crate) fn fit<B, M>(
    setup: &Setup,
    model: M,
    head_config: &BertConfig,
    lengths: &[usize],
    main_metric: &str,
    loss: impl Fn(&M, &[usize], &Device<B>) -> Result<BatchLoss<B>> + Sync,
    evaluate: impl Fn(&M::InnerModule) -> Result<serde_json::Value>,
    device: &Device<B>,
) -> Result<()>
where
    B: AutodiffBackend,
    M: AutodiffModule<B> + PretrainedBert<B>,
    M::InnerModule: PretrainedBert<B::InnerBackend>,
{
    let devices = crate::ddp::devices::<B>(device, &setup.config.training.devices)?;
    let work = Finetuning {
        loss: &loss,
        precision: setup.config.training.precision,
        model: std::marker::PhantomData,
    };
    std::thread::scope(|scope| {
        fit_on(
            scope,
            &devices,
            &work,
            setup,
            model,
            head_config,
            lengths,
            main_metric,
            &evaluate,
        )
    })
}

/// The order of the training rows in `epoch`: a seeded shuffle and, with `group_by_length`,
/// transformers' length grouping (`get_length_grouped_indices`): mega-batches of
/// `min(n / (4 · batch_size), 50)` batches (at least one), each sorted longest first, and the
/// first row of the mega-batch holding the longest row swapped with the very first row.
fn epoch_order(
    lengths: &[usize],
    seed: u64,
    epoch: u64,
    batch_size: usize,
    group_by_length: bool,
) -> Vec<usize> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(derive_seed(&[
        seed, epoch, 7,
    ])));
    if !group_by_length || order.is_empty() {
        return order;
    }
    let batch_size = batch_size.max(1);
    let mega = (lengths.len() / (4 * batch_size)).clamp(1, 50) * batch_size;
    for chunk in order.chunks_mut(mega) {
        // Stable, so ties keep the shuffled order.
        chunk.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
    }
    let longest = (0..order.len())
        .step_by(mega)
        .max_by_key(|&start| (lengths[order[start]], std::cmp::Reverse(start)))
        .unwrap_or(0);
    order.swap(0, longest);
    order
}

/// A fine-tuning replica's step: forward and backward of its micro-batches (lists of training
/// rows) in the compute precision.
struct Finetuning<'a, F, M> {
    loss: &'a F,
    precision: crate::config::Precision,
    model: std::marker::PhantomData<fn() -> M>,
}

/// Losses of a replica's micro-batches.
#[derive(Debug, Default)]
struct MicroStats {
    loss_sum: f64,
    tokens: usize,
}

impl<B, M, F> crate::ddp::Work<B> for Finetuning<'_, F, M>
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
    F: Fn(&M, &[usize], &Device<B>) -> Result<BatchLoss<B>> + Sync,
{
    type Model = M;
    type Share = Vec<Vec<usize>>;
    type Stats = MicroStats;

    fn gradients(
        &self,
        model: &M,
        share: &Vec<Vec<usize>>,
        device: &Device<B>,
    ) -> Result<(burn::optim::GradientsParams, MicroStats)> {
        let mut stats = MicroStats::default();
        let mut accumulation = Accumulation::default();
        for rows in share {
            let l = (self.loss)(&self.precision.compute_copy(model), rows, device)?;
            stats.loss_sum += f64::from(l.loss.clone().into_scalar().elem::<f32>());
            stats.tokens += l.tokens;
            accumulation.add(model, l.loss.backward());
        }
        if share.is_empty() {
            // No data left for this replica in the last step: zero gradients of the same
            // parameters, for the all-reduce.
            let l = (self.loss)(&self.precision.compute_copy(model), &[0], device)?;
            accumulation.add(model, (l.loss * 0.0).backward());
        }
        Ok((accumulation.take().0, stats))
    }
}

/// [`fit`] inside the scope of the data-parallel worker threads.
#[allow(clippy::too_many_arguments)]
fn fit_on<'scope, B, M, F>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    devices: &[Device<B>],
    work: &'scope Finetuning<'scope, F, M>,
    setup: &Setup,
    model: M,
    head_config: &BertConfig,
    lengths: &[usize],
    main_metric: &str,
    evaluate: &impl Fn(&M::InnerModule) -> Result<serde_json::Value>,
) -> Result<()>
where
    B: AutodiffBackend,
    M: AutodiffModule<B> + PretrainedBert<B>,
    M::InnerModule: PretrainedBert<B::InnerBackend>,
    F: Fn(&M, &[usize], &Device<B>) -> Result<BatchLoss<B>> + Sync,
{
    let device = &devices[0];
    let config = &setup.config;
    let training = &config.training;
    let out = &config.output.dir;
    let n_train = lengths.len();
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    write_atomically(
        &out.join("config.toml"),
        toml::to_string(config)?.as_bytes(),
    )?;
    if n_train == 0 {
        bail!("{}: no training examples", config.task.train_file.display());
    }
    let metric = training
        .metric_for_best
        .clone()
        .unwrap_or_else(|| main_metric.to_string());
    let batch_size = training.batch_size.max(1);
    let micro = training.gradient_accumulation_steps.max(1) as u64;
    // Micro-batches per step, all replicas together.
    let per_step = micro * devices.len() as u64;
    let batches_per_epoch = n_train.div_ceil(batch_size) as u64;
    let total = match training.epochs {
        Some(e) => (e * batches_per_epoch).div_ceil(per_step),
        None => training.max_steps,
    };
    let last_batch = training.epochs.map(|e| e * batches_per_epoch);
    let seed = training.seed;
    let mut model = model;
    let mut opt = AdamW::<B>::new(config.optimizer.clone());
    let mut state = FinetuneState::default();
    if let Some(dir) = &setup.resume_from {
        let (m, s) =
            rundir::load_checkpoint(dir, model, &mut opt, |s: &FinetuneState| s.step, device)?;
        model = m;
        state = s;
        eprintln!("resumed from {} at step {}", dir.display(), state.step);
    }
    let mut metrics = rundir::Metrics::open(out)?;
    let interrupted = rundir::interrupt_flag();
    let progress = crate::progress::TrainingProgress::new(total, state.step, "fine-tuning");
    eprintln!(
        "fine-tuning {} ({:.1}M parameters) on {n_train} examples: steps {}..{total}, {} per step",
        head_config
            .architectures
            .first()
            .map_or("the model", String::as_str),
        burn::module::Module::num_params(&model) as f64 / 1e6,
        state.step,
        batch_size * per_step as usize,
    );
    // Data parallelism: replicas 1.. on worker threads (see crate::ddp); replica 0 is this
    // thread. A step's micro-batches are consecutive batches of the epoch's order, replica r
    // taking the r-th run of `micro` of them: N devices give the step of one device
    // accumulating N·micro batches.
    let replicas =
        crate::ddp::Replicas::start(scope, devices, work, &model, &opt, &config.optimizer, seed)?;
    let mut order: (u64, Vec<usize>) = (u64::MAX, Vec::new());
    let mut window = (0usize, Instant::now());
    let mut early_stop = false;
    while state.step < total {
        let step = state.step;
        let mut shares: Vec<Vec<Vec<usize>>> = vec![Vec::new(); devices.len()];
        let mut epoch = 0;
        for (i, b) in (step * per_step..(step + 1) * per_step).enumerate() {
            if last_batch.is_some_and(|l| b >= l) {
                break;
            }
            epoch = b / batches_per_epoch;
            if order.0 != epoch {
                let o = epoch_order(lengths, seed, epoch, batch_size, training.group_by_length);
                order = (epoch, o);
            }
            let start = (b % batches_per_epoch) as usize * batch_size;
            let rows = &order.1[start..(start + batch_size).min(n_train)];
            shares[i / micro as usize].push(rows.to_vec());
        }
        let step_micro_batches: usize = shares.iter().map(Vec::len).sum();
        let lr = lr_at(
            step,
            total,
            config.optimizer.learning_rate,
            &config.schedule,
        );
        B::seed(device, derive_seed(&[seed, step, 5]));
        let (next, replica_stats, stats) = replicas.step(
            work,
            model,
            &mut opt,
            shares,
            step_micro_batches,
            step,
            lr,
            device,
        )?;
        model = next;
        let mut step_loss = 0.0;
        for s in &replica_stats {
            step_loss += s.loss_sum;
            window.0 += s.tokens;
        }
        step_loss /= step_micro_batches.max(1) as f64;
        if !step_loss.is_finite() {
            // The weights of this step are not saved: the last checkpoint stays the last good one.
            return Err(rundir::diverged(step_loss, step + 1, out));
        }
        state.step += 1;
        progress.step(step_loss);
        if state.step.is_multiple_of(training.log_every_steps.max(1)) || state.step == total {
            let secs = window.1.elapsed().as_secs_f64().max(1e-9);
            metrics.write(&serde_json::json!({
                "split": "train", "step": state.step, "epoch": epoch, "loss": step_loss,
                "lr": stats.lr, "grad_norm": stats.grad_norm,
                "tokens_per_second": window.0 as f64 / secs,
            }))?;
            progress.log(|| {
                format!(
                    "step {}/{total} loss {step_loss:.4} lr {lr:.2e} {:.0} tok/s",
                    state.step,
                    window.0 as f64 / secs
                )
            });
            window = (0, Instant::now());
        }
        let eval_now = rundir::due(training.eval_every_steps, state.step);
        if eval_now || state.step == total {
            let eval_start = Instant::now();
            let inner = model.valid();
            let mut m = evaluate(&inner)?;
            // tokens_per_second counts training time only.
            window.1 += eval_start.elapsed();
            m["split"] = "eval".into();
            m["step"] = state.step.into();
            m["epoch"] = epoch.into();
            metrics.write(&m)?;
            progress.say(format!("eval at step {}: {m}", state.step));
            let value = m[&metric].as_f64().with_context(|| {
                format!("training.metric_for_best: the dev metrics have no {metric:?}")
            })?;
            let better = state.best.is_none_or(|b| {
                if higher_is_better(&metric) {
                    value > b
                } else {
                    value < b
                }
            });
            if better {
                state.best = Some(value);
                state.best_step = Some(state.step);
                state.evals_without_improvement = 0;
                rundir::save_model_dir(
                    &inner,
                    head_config,
                    &setup.tokenizer,
                    &out.join("best"),
                    &[("eval.json", serde_json::to_string_pretty(&m)?)],
                )?;
            } else {
                state.evals_without_improvement += 1;
            }
            state.last_eval = m;
            if let Some(patience) = training.early_stopping_patience
                && state.evals_without_improvement >= patience
                && state.step < total
            {
                progress.say(format!(
                    "early stopping at step {}: {metric} has not improved on {} (step {}) for {patience} evaluations",
                    state.step,
                    state.best.unwrap_or(f64::NAN),
                    state.best_step.unwrap_or(0)
                ));
                early_stop = true;
            }
        }
        let save_now = rundir::due(training.save_every_steps, state.step);
        let stop = rundir::stop_requested(&interrupted, training, state.step, total);
        if save_now || stop || early_stop || state.step == total {
            rundir::save_checkpoint(
                out,
                state.step,
                &model,
                head_config,
                &opt,
                &state,
                training.keep_checkpoints,
            )?;
        }
        if stop && !early_stop {
            progress.finish();
            eprintln!(
                "stopped: checkpoint saved at step {}; continue with --resume",
                state.step
            );
            return Ok(());
        }
        if early_stop {
            break;
        }
    }
    progress.finish();
    let mut eval = state.last_eval.clone();
    if let Some(obj) = eval.as_object_mut() {
        obj.remove("split");
    }
    let eval_text = serde_json::to_string_pretty(&eval)?;
    rundir::save_model_dir(
        &model.valid(),
        head_config,
        &setup.tokenizer,
        &out.join("final"),
        &[("eval.json", eval_text.clone())],
    )?;
    write_atomically(&out.join("eval.json"), eval_text.as_bytes())?;
    if let Err(e) = crate::plot::loss_plot(out) {
        eprintln!("warning: no loss.png: {e:#}");
    }
    eprintln!("dev: {eval}");
    Ok(())
}

fn setup(config: FinetuneConfig, resume_from: Option<PathBuf>) -> Result<Setup> {
    let init = config
        .model
        .init_from
        .as_deref()
        .context("model.init_from is required for fine-tuning (an HF directory or Hub id)")?;
    let init_dir = crate::hub::resolve_model(Path::new(init))?;
    let tokenizer = BertTokenizer::from_dir(&init_dir)
        .with_context(|| format!("cannot load the tokenizer of {}", init_dir.display()))?;
    let bert_config = config.model.bert_config(Some(&init_dir))?;
    let truncating =
        tokenizer.with_truncation(config.task.max_length(), Truncation::LongestFirst)?;
    Ok(Setup {
        config,
        init_dir,
        tokenizer,
        truncating,
        bert_config,
        resume_from,
    })
}

/// Builds the head model (seeded) with the encoder weights of `setup.init_dir`.
pub(crate) fn init_model<B: Backend, M: PretrainedBert<B>>(
    setup: &Setup,
    head_config: &BertConfig,
    device: &Device<B>,
) -> Result<M> {
    B::seed(device, derive_seed(&[setup.config.training.seed, 0]));
    let model = M::init(head_config, M::POOLER, device);
    let (model, report) = bert_model::load_weights(
        model,
        &bert_model::checkpoint::weights_file(&setup.init_dir)?,
        LoadOptions::partial(),
    )?;
    eprintln!(
        "loaded {} tensors from {}; new: {}",
        report.loaded,
        setup.init_dir.display(),
        if report.missing.is_empty() {
            "none".into()
        } else {
            report.missing.join(", ")
        }
    );
    Ok(model)
}

/// `bert finetune`.
pub fn run(args: &FinetuneArgs) -> Result<()> {
    let (config, _) = config::load::<FinetuneConfig>(&args.config, &args.set)?;
    let kind = BackendKind::resolve(config.training.backend.as_deref())?;
    // Before anything is loaded: an existing run is never overwritten without --resume.
    let resume_from = rundir::check_resume(&config.output.dir, args.resume)?;
    let setup = setup(config, resume_from)?;
    crate::with_backend!(kind, |B, device| {
        type A = burn::backend::Autodiff<B>;
        // Before the data is read and tokenized. Replica 0 (the model, evaluation and
        // checkpoints) runs on the first listed device.
        let device =
            crate::ddp::devices::<A>(&device, &setup.config.training.devices)?.swap_remove(0);
        setup.config.training.precision.check::<A>(&device)?;
        match setup.config.task.kind {
            TaskKind::SequenceClassification => sequence::train::<A>(&setup, &device)?,
            TaskKind::TokenClassification => token::train::<A>(&setup, &device)?,
            TaskKind::QuestionAnswering => qa::train::<A>(&setup, &device)?,
            TaskKind::MultipleChoice => choice::train::<A>(&setup, &device)?,
        }
    });
    Ok(())
}

/// `bert evaluate`.
pub fn evaluate(args: &EvaluateArgs) -> Result<()> {
    let (mut config, _) = config::load::<FinetuneConfig>(&args.config, &args.set)?;
    let kind = BackendKind::resolve(
        args.backend
            .as_deref()
            .or(config.training.backend.as_deref()),
    )?;
    let dir = crate::hub::resolve_model(&args.model)?;
    let model_config = bert_model::checkpoint::load_config(&dir)?;
    let task = config.task.kind;
    if let Some(arch) = model_config.architectures.first()
        && arch != task.architecture()
    {
        bail!(
            "{} is a {arch}, but task.kind {task:?} needs a {}",
            dir.display(),
            task.architecture()
        );
    }
    config.model.init_from = Some(dir.to_string_lossy().to_string());
    let setup = setup(config, None)?;
    let metrics = crate::with_backend!(kind, |B, device| match task {
        TaskKind::SequenceClassification => sequence::evaluate_dir::<B>(&setup, &dir, &device)?,
        TaskKind::TokenClassification => token::evaluate_dir::<B>(&setup, &dir, &device)?,
        TaskKind::QuestionAnswering => qa::evaluate_dir::<B>(&setup, &dir, &device)?,
        TaskKind::MultipleChoice => choice::evaluate_dir::<B>(&setup, &dir, &device)?,
    });
    let text = serde_json::to_string_pretty(&metrics)?;
    println!("{text}");
    let path = args
        .output
        .clone()
        .unwrap_or_else(|| setup.config.output.dir.join("evaluate.json"));
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    write_atomically(&path, text.as_bytes())?;
    eprintln!("metrics written to {}", path.display());
    Ok(())
}

/// Loads a fine-tuned head model for inference (strict: every tensor must be there).
pub(crate) fn load_head<B: Backend, M: PretrainedBert<B>>(
    dir: &Path,
    device: &Device<B>,
) -> Result<(M, BertConfig)> {
    let (model, config, _) =
        bert_model::load_pretrained::<B, M>(dir, LoadOptions::strict(), device)
            .with_context(|| format!("cannot load {}", dir.display()))?;
    Ok((model, config))
}

/// One parsed input line of `bert predict`.
pub(crate) struct InputLine {
    /// 1-based line number.
    pub line: usize,
    /// The JSON object.
    pub value: serde_json::Value,
}

/// A string field of an input line, or a `file:line` error.
pub(crate) fn field<'a>(path: &Path, line: &'a InputLine, name: &str) -> Result<&'a str> {
    line.value[name].as_str().with_context(|| {
        format!(
            "{}:{}: missing string field {name:?}",
            path.display(),
            line.line
        )
    })
}

/// `bert predict`.
pub fn predict(args: &PredictArgs) -> Result<()> {
    let kind = BackendKind::resolve(args.backend.as_deref())?;
    let dir = crate::hub::resolve_model(&args.model)?;
    let config = bert_model::checkpoint::load_config(&dir)?;
    let arch = config.architectures.first().cloned().unwrap_or_default();
    let task = TaskKind::from_architecture(&arch).with_context(|| {
        format!(
            "{}: architecture {arch:?} has no task head to predict with (expected BertForSequenceClassification, BertForTokenClassification, BertForQuestionAnswering or BertForMultipleChoice)",
            dir.display()
        )
    })?;
    let text = std::fs::read_to_string(&args.input)
        .with_context(|| format!("cannot read {}", args.input.display()))?;
    let mut lines = Vec::new();
    for (i, l) in text.lines().enumerate() {
        if l.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(l)
            .with_context(|| format!("{}:{}: invalid JSON", args.input.display(), i + 1))?;
        if !value.is_object() {
            bail!("{}:{}: expected a JSON object", args.input.display(), i + 1);
        }
        lines.push(InputLine { line: i + 1, value });
    }
    let tokenizer = BertTokenizer::from_dir(&dir)?;
    let max_length = args.max_length.unwrap_or(match task {
        TaskKind::QuestionAnswering => 384,
        _ => 512,
    });
    let max_length = max_length.min(config.max_position_embeddings);
    // QA cuts long contexts into windows; every other task truncates longest first.
    let tokenizer = match task {
        TaskKind::QuestionAnswering => tokenizer.with_windows(
            max_length,
            args.doc_stride.unwrap_or(128.min(max_length / 3)),
        )?,
        _ => tokenizer.with_truncation(max_length, Truncation::LongestFirst)?,
    };
    let results: Vec<serde_json::Value> = crate::with_backend!(kind, |B, device| match task {
        TaskKind::SequenceClassification => {
            sequence::predict::<B>(&dir, &tokenizer, &lines, args, &device)?
        }
        TaskKind::TokenClassification => {
            token::predict::<B>(&dir, &tokenizer, &lines, args, &device)?
        }
        TaskKind::QuestionAnswering => qa::predict::<B>(&dir, &tokenizer, &lines, args, &device)?,
        TaskKind::MultipleChoice => choice::predict::<B>(&dir, &tokenizer, &lines, args, &device)?,
    });
    let mut out = String::new();
    for r in &results {
        out.push_str(&r.to_string());
        out.push('\n');
    }
    write_atomically(&args.output, out.as_bytes())?;
    eprintln!(
        "{} predictions written to {}",
        results.len(),
        args.output.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::epoch_order;

    /// Padded tokens of the batches of `order` (each batch padded to its longest row).
    fn padded(order: &[usize], lengths: &[usize], batch_size: usize) -> usize {
        order
            .chunks(batch_size)
            .map(|b| b.len() * b.iter().map(|&i| lengths[i]).max().unwrap_or(0))
            .sum()
    }

    #[test]
    fn group_by_length_sorts_mega_batches_and_puts_the_longest_row_first() {
        // 1,000 rows of pseudo-random lengths 5..=132; batch 8 → mega-batches of 31 · 8 = 248.
        let lengths: Vec<usize> = (0..1000u64)
            .map(|i| 5 + ((i * 7919) % 128) as usize)
            .collect();
        let (batch, mega) = (8, 248);
        for epoch in 0..3 {
            let plain = epoch_order(&lengths, 42, epoch, batch, false);
            let grouped = epoch_order(&lengths, 42, epoch, batch, true);
            assert_eq!(
                grouped,
                epoch_order(&lengths, 42, epoch, batch, true),
                "seeded"
            );
            let mut sorted = grouped.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, (0..1000).collect::<Vec<_>>(), "a permutation");
            // The same rows in each mega-batch as the plain shuffle, longest first.
            for (g, p) in grouped.chunks(mega).zip(plain.chunks(mega)).skip(1) {
                let (mut a, mut b) = (g.to_vec(), p.to_vec());
                a.sort_unstable();
                b.sort_unstable();
                assert_eq!(a, b);
            }
            let first = grouped[0];
            assert_eq!(lengths[first], 132, "the longest row leads");
            let skip_swapped =
                |c: &[usize]| c[1..].windows(2).all(|w| lengths[w[0]] >= lengths[w[1]]);
            assert!(
                grouped.chunks(mega).all(skip_swapped),
                "sorted longest first"
            );
            // Far less padding than the plain shuffle.
            let (pg, pp) = (
                padded(&grouped, &lengths, batch),
                padded(&plain, &lengths, batch),
            );
            assert!(pg * 10 < pp * 8, "padded tokens {pg} vs {pp}");
        }
        // Off: the plain seeded shuffle, different per epoch.
        assert_ne!(
            epoch_order(&lengths, 42, 0, batch, false),
            epoch_order(&lengths, 42, 1, batch, false)
        );
        assert!(epoch_order(&[], 1, 0, 8, true).is_empty());
    }
}
