//! `bert finetune` for sequence classification and regression (other task kinds: not yet).
//!
//! Starts from an HF directory or Hub id (`model.init_from`): the encoder is loaded, the
//! classifier is new (a partial load, listed in the log). Each epoch visits the training rows in
//! a seeded order in batches padded to their longest row; the dev set is evaluated every
//! `eval_every_steps` and at the end; `eval.json` and `final/` (HF layout, with `id2label` and the
//! tokenizer) are written into `output.dir`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use bert_data::tasks::classification::{
    ClassificationExample, Columns, LabelSet, Target, read_classification,
};
use bert_data::{BertTokenizer, Padding, Truncation, pad_rows};
use bert_model::checkpoint::write_atomically;
use bert_model::{BertForSequenceClassification, BertInput, LoadOptions, save_pretrained};
use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Device, ElementConversion, Int, Tensor, TensorData};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::backend::BackendKind;
use crate::config::{self, ModelSection, OutputSection, TrainingSection};
use crate::metrics;
use crate::optim::{AdamW, OptimizerConfig, ScheduleConfig, lr_at};

/// `[task]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSection {
    /// `sequence-classification` (others: not yet).
    pub kind: String,
    /// Training file (TSV, CSV or JSONL).
    pub train_file: PathBuf,
    /// Dev file.
    pub valid_file: PathBuf,
    /// Text column.
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
    /// Labels in id order (default: sorted labels of the training file).
    #[serde(default)]
    pub labels: Option<Vec<String>>,
    /// One real-valued target (STS-B).
    #[serde(default)]
    pub regression: bool,
    /// Longest input, specials included (longest-first truncation).
    #[serde(default = "d::max_length")]
    pub max_length: usize,
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
    pub fn max_length() -> usize {
        128
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
}

struct Encoded {
    ids: Vec<u32>,
    types: Vec<u32>,
    target: Target,
}

impl TaskSection {
    /// The reader's column settings.
    fn columns(&self) -> Columns {
        Columns {
            text: self.text_column.clone(),
            text_pair: self.text_pair_column.clone(),
            label: self.label_column.clone(),
            header: self.header,
        }
    }
}

fn encode_examples(
    path: &Path,
    examples: &[ClassificationExample],
    labels: &LabelSet,
    tokenizer: &BertTokenizer,
) -> Result<Vec<Encoded>> {
    examples
        .iter()
        .map(|e| {
            let enc = tokenizer
                .encode(&e.text, e.text_pair.as_deref())
                .with_context(|| format!("{}:{}", path.display(), e.line))?;
            Ok(Encoded {
                ids: enc.input_ids,
                types: enc.token_type_ids,
                target: labels.target(e, path)?,
            })
        })
        .collect()
}

fn batch_input<B: Backend>(rows: &[&Encoded], pad: u32, device: &Device<B>) -> BertInput<B> {
    let masks: Vec<Vec<u32>> = rows.iter().map(|r| vec![1; r.ids.len()]).collect();
    let padded = pad_rows(
        rows.iter()
            .zip(&masks)
            .map(|(r, m)| (r.ids.as_slice(), r.types.as_slice(), m.as_slice())),
        pad,
        Padding::default(),
    );
    bert_data::tensors::bert_input(&padded, device)
}

fn loss<B: Backend>(logits: Tensor<B, 2>, rows: &[&Encoded], device: &Device<B>) -> Tensor<B, 1> {
    let n = rows.len();
    match rows.first().map(|r| r.target) {
        Some(Target::Score(_)) => {
            let y: Vec<f32> = rows
                .iter()
                .map(|r| match r.target {
                    Target::Score(s) => s,
                    Target::Class(c) => c as f32,
                })
                .collect();
            let y = Tensor::<B, 1>::from_data(TensorData::new(y, [n]), device);
            (logits.reshape([n]) - y).powi_scalar(2).mean()
        }
        _ => {
            let y: Vec<i64> = rows
                .iter()
                .map(|r| match r.target {
                    Target::Class(c) => c as i64,
                    Target::Score(s) => s as i64,
                })
                .collect();
            let y = Tensor::<B, 1, Int>::from_data(TensorData::new(y, [n]), device);
            crate::pretrain::cross_entropy(logits, y)
        }
    }
}

/// Dev metrics: accuracy and macro-F1 (+ F1 of class 1 and MCC) or Pearson/Spearman/MSE.
fn evaluate<B: Backend>(
    model: &BertForSequenceClassification<B>,
    rows: &[Encoded],
    labels: &LabelSet,
    batch_size: usize,
    pad: u32,
    device: &Device<B>,
) -> Result<serde_json::Value> {
    let mut outputs: Vec<Vec<f32>> = Vec::new();
    for chunk in rows.chunks(batch_size.max(1)) {
        let refs: Vec<&Encoded> = chunk.iter().collect();
        let (logits, _) = model.forward(batch_input(&refs, pad, device), false);
        let [n, c] = logits.dims();
        let v: Vec<f32> = logits
            .into_data()
            .convert::<f32>()
            .to_vec()
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        outputs.extend((0..n).map(|i| v[i * c..(i + 1) * c].to_vec()));
    }
    Ok(match labels {
        LabelSet::Regression => {
            let pred: Vec<f64> = outputs.iter().map(|o| f64::from(o[0])).collect();
            let gold: Vec<f64> = rows
                .iter()
                .map(|r| match r.target {
                    Target::Score(s) => f64::from(s),
                    Target::Class(c) => c as f64,
                })
                .collect();
            let mse = pred
                .iter()
                .zip(&gold)
                .map(|(p, g)| (p - g).powi(2))
                .sum::<f64>()
                / gold.len().max(1) as f64;
            serde_json::json!({
                "pearson": metrics::pearson(&pred, &gold),
                "spearman": metrics::spearman(&pred, &gold),
                "mse": mse,
                "examples": gold.len(),
            })
        }
        LabelSet::Classes(names) => {
            let pred: Vec<usize> = outputs
                .iter()
                .map(|o| {
                    (0..o.len())
                        .max_by(|&a, &b| o[a].total_cmp(&o[b]))
                        .unwrap_or(0)
                })
                .collect();
            let gold: Vec<usize> = rows
                .iter()
                .map(|r| match r.target {
                    Target::Class(c) => c,
                    Target::Score(s) => s as usize,
                })
                .collect();
            let mut v = serde_json::json!({
                "accuracy": metrics::accuracy(&pred, &gold),
                "f1": metrics::macro_f1(&pred, &gold, names.len()),
                "matthews": metrics::matthews(&pred, &gold, names.len()),
                "examples": gold.len(),
            });
            if names.len() == 2 {
                v["f1_positive"] = serde_json::json!(metrics::binary_f1(&pred, &gold));
            }
            v
        }
    })
}

fn train<B: AutodiffBackend>(config: &FinetuneConfig, device: &Device<B>) -> Result<()> {
    if config.task.kind != "sequence-classification" {
        bail!(
            "task.kind {:?} is not supported yet (sequence-classification is)",
            config.task.kind
        );
    }
    let init = config
        .model
        .init_from
        .as_deref()
        .context("model.init_from is required for fine-tuning (an HF directory or Hub id)")?;
    let init_dir = crate::hub::resolve_model(Path::new(init))?;
    let out = &config.output.dir;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    write_atomically(
        &out.join("config.toml"),
        toml::to_string(config)?.as_bytes(),
    )?;
    let tokenizer = BertTokenizer::from_dir(&init_dir)?
        .with_truncation(config.task.max_length, Truncation::LongestFirst)?;
    let pad = tokenizer.special_tokens().pad;
    let columns = config.task.columns();
    let train_examples = read_classification(&config.task.train_file, &columns, true)?;
    let valid_examples = read_classification(&config.task.valid_file, &columns, true)?;
    let labels = if config.task.regression {
        LabelSet::Regression
    } else if let Some(names) = &config.task.labels {
        LabelSet::Classes(names.clone())
    } else {
        LabelSet::from_examples(&train_examples)
    };
    let train_rows = encode_examples(
        &config.task.train_file,
        &train_examples,
        &labels,
        &tokenizer,
    )?;
    let valid_rows = encode_examples(
        &config.task.valid_file,
        &valid_examples,
        &labels,
        &tokenizer,
    )?;
    let mut bert_config = config.model.bert_config(Some(&init_dir))?;
    bert_config = match &labels {
        LabelSet::Classes(names) => bert_config.with_labels(names),
        LabelSet::Regression => {
            let mut c = bert_config.with_labels(&["score"]);
            c.problem_type = Some("regression".into());
            c
        }
    };
    bert_config.architectures = vec!["BertForSequenceClassification".into()];
    let seed = config.training.seed;
    B::seed(
        device,
        bert_data::pretraining::stream::derive_seed(&[seed, 0]),
    );
    let mut model = BertForSequenceClassification::<B>::new(&bert_config, device);
    let (loaded, report) = bert_model::load_weights(
        model,
        &bert_model::checkpoint::weights_file(&init_dir)?,
        LoadOptions::partial(),
    )?;
    model = loaded;
    eprintln!(
        "loaded {} tensors from {}; new: {}",
        report.loaded,
        init_dir.display(),
        if report.missing.is_empty() {
            "none".into()
        } else {
            report.missing.join(", ")
        }
    );
    let batch_size = config.training.batch_size.max(1);
    let steps_per_epoch = train_rows.len().div_ceil(batch_size) as u64;
    let total = match config.training.epochs {
        Some(e) => e * steps_per_epoch,
        None => config.training.max_steps,
    };
    let mut opt = AdamW::<B>::new(config.optimizer.clone());
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(out.join("metrics.jsonl"))?;
    let progress = crate::progress::bar(total, "fine-tuning");
    let mut step = 0u64;
    let mut last_eval = serde_json::Value::Null;
    'outer: for epoch in 0.. {
        let mut order: Vec<usize> = (0..train_rows.len()).collect();
        order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(
            bert_data::pretraining::stream::derive_seed(&[seed, epoch, 7]),
        ));
        for chunk in order.chunks(batch_size) {
            if step >= total {
                break 'outer;
            }
            B::seed(
                device,
                bert_data::pretraining::stream::derive_seed(&[seed, step, 5]),
            );
            let rows: Vec<&Encoded> = chunk.iter().map(|&i| &train_rows[i]).collect();
            let (logits, _) = model.forward(batch_input(&rows, pad, device), false);
            let l = loss(logits, &rows, device);
            let value = f64::from(l.clone().into_scalar().elem::<f32>());
            if !value.is_finite() {
                bail!("loss is {value} at step {step}: stopping");
            }
            let grads = l.backward();
            let lr = lr_at(
                step,
                total,
                config.optimizer.learning_rate,
                &config.schedule,
            );
            let (next, stats) = opt.step(model, &grads, lr);
            model = next;
            step += 1;
            progress.inc(1);
            if step.is_multiple_of(config.training.log_every_steps.max(1)) {
                use std::io::Write as _;
                writeln!(
                    log,
                    "{}",
                    serde_json::json!({"split": "train", "step": step, "epoch": epoch, "loss": value, "lr": stats.lr, "grad_norm": stats.grad_norm})
                )?;
            }
            let eval_now = config.training.eval_every_steps > 0
                && step.is_multiple_of(config.training.eval_every_steps);
            if eval_now || step == total {
                let mut m = evaluate(
                    &model.valid(),
                    &valid_rows,
                    &labels,
                    batch_size,
                    pad,
                    device,
                )?;
                m["split"] = "eval".into();
                m["step"] = step.into();
                m["epoch"] = epoch.into();
                use std::io::Write as _;
                writeln!(log, "{m}")?;
                progress.println(format!("eval at step {step}: {m}"));
                last_eval = m;
            }
        }
    }
    progress.finish_and_clear();
    let final_dir = out.join("final");
    save_pretrained(&model.valid(), &bert_config, &final_dir)?;
    BertTokenizer::from_dir(&init_dir)?.save(&final_dir)?;
    let mut eval = last_eval;
    if let Some(obj) = eval.as_object_mut() {
        obj.remove("split");
    }
    write_atomically(
        &out.join("eval.json"),
        serde_json::to_string_pretty(&eval)?.as_bytes(),
    )?;
    eprintln!("dev: {eval}");
    Ok(())
}

/// `bert finetune`.
pub fn run(args: &FinetuneArgs) -> Result<()> {
    let (config, _) = config::load::<FinetuneConfig>(&args.config, &args.set)?;
    let kind = BackendKind::resolve(config.training.backend.as_deref())?;
    crate::with_backend!(kind, |B, device| train::<burn::backend::Autodiff<B>>(
        &config, &device
    )?);
    Ok(())
}
