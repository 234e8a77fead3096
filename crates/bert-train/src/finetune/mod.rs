//! Fine-tuning for the four task kinds: sequence classification (and regression), token
//! classification, extractive question answering and multiple choice, each in its own file
//! (reading its data, its head's loss, its dev metrics, `bert evaluate` and `bert predict`).
//!
//! Fine-tuning starts from an HF directory or Hub id (`model.init_from`): the encoder is loaded
//! and the task head is new (a partial load, listed in the log). Every task trains through the
//! one [`Trainer`](crate::trainer::Trainer) loop (`fit`), on batches of row indices in a seeded
//! order per epoch ([`order::EpochBatches`]), padded to their longest row; `final/` is an HF
//! directory with the tokenizer and `id2label`.

mod choice;
pub mod order;
pub(crate) mod qa;
mod sequence;
mod task;
pub(crate) mod token;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use bert_data::{BertTokenizer, Padding, Truncation, pad_rows, seeds};
use bert_model::{Architecture, BertConfig, BertInput, BertModel, LoadOptions, PretrainedBert};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::config::FinetuneConfig;
use crate::trainer::RunDir;

pub(crate) use task::fit;
pub use task::{LossStats, metric_goal};

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
    pub fn architecture(self) -> Architecture {
        match self {
            Self::SequenceClassification => Architecture::SequenceClassification,
            Self::TokenClassification => Architecture::TokenClassification,
            Self::QuestionAnswering => Architecture::QuestionAnswering,
            Self::MultipleChoice => Architecture::MultipleChoice,
        }
    }

    /// The kind that trains an HF architecture, if one does.
    pub fn from_architecture(architecture: Architecture) -> Option<Self> {
        [
            Self::SequenceClassification,
            Self::TokenClassification,
            Self::QuestionAnswering,
            Self::MultipleChoice,
        ]
        .into_iter()
        .find(|k| k.architecture() == architecture)
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

/// What every task needs to prepare its data and build its model.
#[derive(Debug)]
pub struct Setup {
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
    /// The run directory (`None` for `bert evaluate`).
    pub run: Option<RunDir>,
}

impl Setup {
    /// Resolves `model.init_from` and loads its tokenizer and config.
    pub fn new(config: FinetuneConfig, run: Option<RunDir>) -> Result<Self> {
        let init =
            config.model.init_from.as_deref().context(
                "model.init_from is required for fine-tuning (an HF directory or Hub id)",
            )?;
        let init_dir = crate::hub::resolve_model(Path::new(init))?;
        let bert_config = config.model.bert_config(Some(&init_dir))?;
        // Ids the model cannot embed fail the encoding of their example (file:line).
        let tokenizer = BertTokenizer::from_dir(&init_dir)
            .with_context(|| format!("cannot load the tokenizer of {}", init_dir.display()))?
            .with_model_limits(model_limits(&bert_config));
        let mut config = config;
        let positions = bert_config.max_position_embeddings;
        if config.task.max_length() > positions {
            eprintln!(
                "warning: task.max_length {} is more than the model's max_position_embeddings {positions}; inputs are cut to {positions} tokens",
                config.task.max_length()
            );
            config.task.max_length = Some(positions);
        }
        let truncating =
            tokenizer.with_truncation(config.task.max_length(), Truncation::LongestFirst)?;
        Ok(Self {
            config,
            init_dir,
            tokenizer,
            truncating,
            bert_config,
            run,
        })
    }

    /// Pad id.
    pub fn pad(&self) -> u32 {
        self.tokenizer.special_tokens().pad
    }
}

/// Fine-tunes the task `setup.config.task.kind` names; `device` is the backend's default
/// device (`training.devices` picks among its kind).
pub fn train<B: AutodiffBackend>(setup: &Setup, device: &Device<B>) -> Result<()> {
    match setup.config.task.kind {
        TaskKind::SequenceClassification => sequence::train::<B>(setup, device),
        TaskKind::TokenClassification => token::train::<B>(setup, device),
        TaskKind::QuestionAnswering => qa::train::<B>(setup, device),
        TaskKind::MultipleChoice => choice::train::<B>(setup, device),
    }
}

/// The dev metrics of the fine-tuned model in `dir` on `task.valid_file` (`bert evaluate`).
pub fn evaluate_dir<B: Backend>(
    setup: &Setup,
    dir: &Path,
    device: &Device<B>,
) -> Result<serde_json::Value> {
    match setup.config.task.kind {
        TaskKind::SequenceClassification => sequence::evaluate_dir::<B>(setup, dir, device),
        TaskKind::TokenClassification => token::evaluate_dir::<B>(setup, dir, device),
        TaskKind::QuestionAnswering => qa::evaluate_dir::<B>(setup, dir, device),
        TaskKind::MultipleChoice => choice::evaluate_dir::<B>(setup, dir, device),
    }
}

/// Predictions of the fine-tuned `task` model in `dir` for each input line (`bert predict`).
pub fn predict<B: Backend>(
    task: TaskKind,
    dir: &Path,
    tokenizer: &BertTokenizer,
    lines: &[PredictLine],
    options: &PredictOptions,
    device: &Device<B>,
) -> Result<Vec<serde_json::Value>> {
    match task {
        TaskKind::SequenceClassification => {
            sequence::predict::<B>(dir, tokenizer, lines, options, device)
        }
        TaskKind::TokenClassification => {
            token::predict::<B>(dir, tokenizer, lines, options, device)
        }
        TaskKind::QuestionAnswering => qa::predict::<B>(dir, tokenizer, lines, options, device),
        TaskKind::MultipleChoice => choice::predict::<B>(dir, tokenizer, lines, options, device),
    }
}

/// Options of `bert predict` the tasks read.
#[derive(Debug, Clone)]
pub struct PredictOptions {
    /// The input file (for `file:line` errors).
    pub input: PathBuf,
    /// Rows per forward pass.
    pub batch_size: usize,
    /// Best labels (classification) or answers (QA) per line.
    pub top_k: usize,
    /// QA: start and end positions considered per window.
    pub n_best: usize,
    /// QA: longest answer, in tokens.
    pub max_answer_length: usize,
}

/// Keeps the first `limit` items.
pub(crate) fn first<T>(mut items: Vec<T>, limit: Option<usize>) -> Vec<T> {
    if let Some(n) = limit {
        items.truncate(n);
    }
    items
}

/// Pads rows of `(ids, type ids)` to the longest one: the model input and the padded length.
/// Ids must fit `bert`'s tables (`vocab_size` token ids, `type_vocab_size` segment ids, rows
/// no longer than `max_position_embeddings`): an id outside them is an error, not an
/// out-of-bounds read.
pub(crate) fn input_of<'a, B: Backend>(
    bert: &BertModel<B>,
    rows: impl IntoIterator<Item = (&'a [u32], &'a [u32])>,
    pad: u32,
    device: &Device<B>,
) -> Result<(BertInput<B>, usize)> {
    let rows: Vec<(&[u32], &[u32])> = rows.into_iter().collect();
    let e = &bert.embeddings;
    let vocab = e.word_embeddings.weight.dims()[0];
    let types = e.token_type_embeddings.weight.dims()[0];
    let positions = e.position_embeddings.weight.dims()[0];
    for (ids, type_ids) in &rows {
        if let Some(id) = ids.iter().find(|&&id| id as usize >= vocab) {
            bail!(
                "token id {id} is outside the model's vocabulary of {vocab} (a tokenizer that does not match the model?)"
            );
        }
        if let Some(t) = type_ids.iter().find(|&&t| t as usize >= types) {
            bail!(
                "token type id {t} is outside the model's type_vocab_size {types} (text pairs need 2)"
            );
        }
        if ids.len() > positions {
            bail!(
                "an input of {} tokens is longer than the model's max_position_embeddings {positions}",
                ids.len()
            );
        }
    }
    let masks: Vec<Vec<u32>> = rows.iter().map(|r| vec![1; r.0.len()]).collect();
    let padded = pad_rows(
        rows.iter()
            .zip(&masks)
            .map(|((ids, types), m)| (*ids, *types, m.as_slice())),
        pad,
        Padding::default(),
    );
    Ok((
        bert_data::tensors::bert_input(&padded, device),
        padded.seq_len,
    ))
}

/// The embedding-table sizes of `config` that encodings must fit.
pub fn model_limits(config: &BertConfig) -> bert_data::ModelLimits {
    bert_data::ModelLimits {
        vocab_size: config.vocab_size,
        type_vocab_size: config.type_vocab_size,
    }
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

/// Builds the head model (seeded) with the encoder weights of `setup.init_dir`.
pub(crate) fn init_model<B: Backend, M: PretrainedBert<B>>(
    setup: &Setup,
    head_config: &BertConfig,
    device: &Device<B>,
) -> Result<M> {
    B::seed(device, seeds::init(setup.config.training.seed));
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

/// One parsed line of a `bert predict` input.
#[derive(Debug, Clone)]
pub struct PredictLine {
    /// 1-based line number.
    pub line: usize,
    /// The JSON object.
    pub value: serde_json::Value,
}

/// A string field of an input line, or a `file:line` error.
pub(crate) fn field<'a>(path: &Path, line: &'a PredictLine, name: &str) -> Result<&'a str> {
    line.value[name].as_str().with_context(|| {
        format!(
            "{}:{}: missing string field {name:?}",
            path.display(),
            line.line
        )
    })
}

#[cfg(test)]
mod tests;
