//! A fine-tuning task as the trainer sees it: the head model, the loss of a batch of training
//! rows, the dev metrics with their directions, and the HF directory it is written as.

use std::path::Path;

use anyhow::{Context, Result, bail};
use bert_data::BertTokenizer;
use bert_model::{BertConfig, LoadOptions, PretrainedBert};
use burn::module::AutodiffModule;
use burn::tensor::Device;
use burn::tensor::backend::AutodiffBackend;

use super::{BatchLoss, Setup, order};
use crate::trainer::{
    BestMetric, Goal, InferenceModel, Measured, MetricMap, Objective, SaveKind, Stats, Task,
    Trainer, TrainerConfig,
};

/// The direction of a dev metric the tasks report: losses and errors are minimised, every
/// other metric (accuracy, F1, correlations, exact match) maximised.
pub fn metric_goal(name: &str) -> Result<Goal> {
    const MAXIMIZED: &[&str] = &[
        "accuracy",
        "f1",
        "micro_f1",
        "matthews",
        "f1_positive",
        "pearson",
        "spearman",
        "precision",
        "recall",
        "exact_match",
    ];
    if name == "mse" || name == "loss" {
        Ok(Goal::Minimize)
    } else if MAXIMIZED.contains(&name) {
        Ok(Goal::Maximize)
    } else {
        bail!(
            "training.metric_for_best: unknown metric {name:?} (the tasks report {}, mse)",
            MAXIMIZED.join(", ")
        )
    }
}

/// The tokens and rows of a step's micro-batches (their losses are the device sums).
#[derive(Debug, Default)]
pub struct LossStats {
    tokens: usize,
    rows: usize,
}

impl Stats for LossStats {
    fn merge(&mut self, other: Self) {
        self.tokens += other.tokens;
        self.rows += other.rows;
    }

    fn tokens(&self) -> usize {
        self.tokens
    }

    fn examples(&self) -> usize {
        self.rows
    }
}

/// A fine-tuning task as the trainer sees it: a head model, the loss of a batch of training
/// rows, the dev metrics, and the HF directory it is written as.
struct HeadTask<'a, M, L, E> {
    loss: L,
    evaluate: E,
    config: &'a BertConfig,
    tokenizer: &'a BertTokenizer,
    examples: usize,
    model: std::marker::PhantomData<fn() -> M>,
}

impl<B, M, L, E> Objective<B> for HeadTask<'_, M, L, E>
where
    B: AutodiffBackend,
    M: AutodiffModule<B> + Send,
    L: Fn(&M, &[usize], &Device<B>) -> Result<BatchLoss<B>> + Sync,
    E: Sync,
{
    type Model = M;
    type Batch = Vec<usize>;
    type Stats = LossStats;

    fn loss(
        &self,
        model: &M,
        rows: &Vec<usize>,
        device: &Device<B>,
    ) -> Result<Measured<B, LossStats>> {
        let l = (self.loss)(model, rows, device)?;
        let stats = LossStats {
            tokens: l.tokens,
            rows: rows.len(),
        };
        Ok(Measured::new(l.loss, stats))
    }
}

impl<B, M, L, E> Task<B> for HeadTask<'_, M, L, E>
where
    B: AutodiffBackend,
    M: AutodiffModule<B> + PretrainedBert<B> + Send,
    M::InnerModule: PretrainedBert<B::InnerBackend>,
    L: Fn(&M, &[usize], &Device<B>) -> Result<BatchLoss<B>> + Sync,
    E: Fn(&M::InnerModule) -> Result<serde_json::Value> + Sync,
{
    fn describe(&self) -> String {
        format!("{} on {} examples", M::ARCHITECTURE.name(), self.examples)
    }

    fn evaluate(
        &self,
        model: &InferenceModel<B, Self>,
        _: &Device<B>,
    ) -> Result<Option<MetricMap>> {
        match (self.evaluate)(model)? {
            serde_json::Value::Object(m) => Ok(Some(m)),
            other => bail!("the dev metrics are not a JSON object: {other}"),
        }
    }

    fn save(&self, model: &InferenceModel<B, Self>, dir: &Path, kind: SaveKind) -> Result<()> {
        bert_model::save_pretrained(model, self.config, dir)?;
        if kind == SaveKind::Export {
            self.tokenizer.save(dir)?;
        }
        Ok(())
    }

    fn load(&self, model: M, dir: &Path, _: &Device<B>) -> Result<M> {
        let (model, _) = bert_model::load_weights::<B, M>(
            model,
            &dir.join("model.safetensors"),
            LoadOptions::strict(),
        )?;
        Ok(model)
    }
}

/// Trains a task's head model with the one [`Trainer`] loop. `lengths` are the training rows'
/// token counts (a multiple-choice row: its longest pair); `loss` computes one micro-batch from
/// training row indices; `evaluate` returns the dev metrics (a JSON object) of the inference
/// model; `main_metric` picks `best/` unless `training.metric_for_best` names another.
#[allow(clippy::too_many_arguments)]
pub(crate) fn fit<B, M>(
    setup: &Setup,
    model: M,
    head_config: &BertConfig,
    lengths: &[usize],
    main_metric: &str,
    loss: impl Fn(&M, &[usize], &Device<B>) -> Result<BatchLoss<B>> + Sync,
    evaluate: impl Fn(&M::InnerModule) -> Result<serde_json::Value> + Sync,
    device: &Device<B>,
) -> Result<()>
where
    B: AutodiffBackend,
    M: AutodiffModule<B> + PretrainedBert<B> + Send,
    M::InnerModule: PretrainedBert<B::InnerBackend>,
{
    let training = &setup.config.training;
    crate::trainer::require_examples(lengths.len(), &setup.config.task.train_file)?;
    let name = training
        .metric_for_best
        .clone()
        .unwrap_or_else(|| main_metric.to_string());
    let best = BestMetric {
        goal: metric_goal(&name)?,
        name,
    };
    let devices = crate::trainer::devices::<B>(device, training)?;
    // A step's micro-batches over every device of every rank (one rank without `bert launch`).
    let ranks = crate::cluster::Cluster::current().size();
    let per_step = (training.gradient_accumulation_steps.max(1) * devices.len() * ranks) as u64;
    let mut data = order::EpochBatches::new(
        lengths,
        training.batch_size,
        training.seed,
        training.group_by_length,
        training.epochs,
    );
    let total_steps = match training.epochs {
        Some(e) => data.steps(e, per_step),
        None => training.max_steps,
    };
    let task = HeadTask {
        loss,
        evaluate,
        config: head_config,
        tokenizer: &setup.tokenizer,
        examples: lengths.len(),
        model: std::marker::PhantomData,
    };
    let config = TrainerConfig {
        training: training.clone(),
        optimizer: setup.config.optimizer.clone(),
        schedule: setup.config.schedule.clone(),
        total_steps,
        best,
        what: "fine-tuning",
    };
    let run = setup
        .run
        .clone()
        .context("fine-tuning needs a run directory")?;
    let trainer = Trainer::new(run, config, devices, model, &task)?;
    trainer.fit(&task, &mut data)?;
    Ok(())
}
