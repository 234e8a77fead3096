//! A task of your own on bert-train's `Trainer`: a small BERT encoder with a new head, trained
//! to tell whether a sequence of random tokens contains the token 7, with checkpoints, exact
//! `--resume`, `metrics.jsonl`, `best/` by accuracy, Ctrl-C and data parallelism from the
//! trainer.
//!
//! ```sh
//! cargo run --release -p bert-train --example custom_task -- runs/contains-7 [--resume] [--steps 60] [--devices 2]
//! ```
//!
//! `--devices 2` runs two replicas (on the one CPU device: the all-reduce path of several
//! GPUs) with half the accumulation each, which trains like one.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use bert_model::loss::cross_entropy;
use bert_model::{BertConfig, BertInput, BertModel, masked_mean};
use bert_train::config::TrainingSection;
use bert_train::trainer::{
    self, BestMetric, DataSource, InferenceModel, Measured, MetricMap, Objective, RunDir, SaveKind,
    Stats, Task, Trainer, TrainerConfig,
};
use burn::backend::{Autodiff, Flex};
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Device, ElementConversion, Int, Tensor, TensorData};
use rand::{Rng, SeedableRng};

type B = Autodiff<Flex>;

const SEQ: usize = 16;
const VOCAB: usize = 64;

/// The encoder and the new head: mean-pooled hidden states → 2 classes.
#[derive(Module, Debug)]
struct ContainsModel<B: Backend> {
    bert: BertModel<B>,
    head: Linear<B>,
}

impl<B: Backend> ContainsModel<B> {
    fn new(config: &BertConfig, device: &B::Device) -> Self {
        Self {
            bert: BertModel::new(config, false, device),
            head: LinearConfig::new(config.hidden_size, 2).init(device),
        }
    }

    /// `[batch, SEQ]` ids → `[batch, 2]` logits.
    fn forward(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 2> {
        let mask = ids.ones_like();
        let out = self
            .bert
            .forward(BertInput::new(ids).with_attention_mask(mask.clone()), false);
        self.head.forward(masked_mean(out.last_hidden_state, mask))
    }
}

/// A batch: rows of token ids and their labels (1: the row contains 7).
#[derive(Debug, Clone)]
struct Batch {
    ids: Vec<i64>,
    labels: Vec<i64>,
}

impl Batch {
    /// `rows` random rows drawn from `seed`; half of them get a 7.
    fn random(rows: usize, seed: u64) -> Self {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut ids = Vec::with_capacity(rows * SEQ);
        let mut labels = Vec::with_capacity(rows);
        for _ in 0..rows {
            let mut row: Vec<i64> = (0..SEQ)
                .map(|_| rng.random_range(8..VOCAB as i64))
                .collect();
            let positive = rng.random_bool(0.5);
            if positive {
                row[rng.random_range(0..SEQ)] = 7;
            }
            ids.extend(row);
            labels.push(i64::from(positive));
        }
        Self { ids, labels }
    }

    fn tensors<B: Backend>(&self, device: &Device<B>) -> (Tensor<B, 2, Int>, Tensor<B, 1, Int>) {
        let n = self.labels.len();
        (
            Tensor::from_data(TensorData::new(self.ids.clone(), [n, SEQ]), device),
            Tensor::from_data(TensorData::new(self.labels.clone(), [n]), device),
        )
    }
}

/// Rows of a step's micro-batches (the loss itself stays on the device: `Measured::new`).
#[derive(Debug, Default)]
struct LossSum {
    rows: usize,
}

impl Stats for LossSum {
    fn merge(&mut self, other: Self) {
        self.rows += other.rows;
    }
    fn tokens(&self) -> usize {
        self.rows * SEQ
    }
    fn examples(&self) -> usize {
        self.rows
    }
}

/// The task: cross-entropy of the head, accuracy on a fixed held-out batch, weights in
/// Burn's named MessagePack format.
struct ContainsSeven {
    dev: Batch,
}

impl<B: AutodiffBackend> Objective<B> for ContainsSeven {
    type Model = ContainsModel<B>;
    type Batch = Batch;
    type Stats = LossSum;

    fn loss(
        &self,
        model: &ContainsModel<B>,
        batch: &Batch,
        device: &Device<B>,
    ) -> Result<Measured<B, LossSum>> {
        let (ids, labels) = batch.tensors(device);
        let loss = cross_entropy(model.forward(ids), labels);
        let stats = LossSum {
            rows: batch.labels.len(),
        };
        Ok(Measured::new(loss, stats))
    }
}

impl<B: AutodiffBackend> Task<B> for ContainsSeven {
    fn describe(&self) -> String {
        "a contains-7 classifier".into()
    }

    fn evaluate(
        &self,
        model: &InferenceModel<B, Self>,
        device: &Device<B>,
    ) -> Result<Option<MetricMap>> {
        let (ids, labels) = self.dev.tensors(device);
        let n = self.dev.labels.len();
        let right = model
            .forward(ids)
            .argmax(1)
            .reshape([n])
            .equal(labels)
            .int()
            .sum()
            .into_scalar()
            .elem::<i64>();
        let mut m = MetricMap::new();
        m.insert("accuracy".into(), (right as f64 / n as f64).into());
        Ok(Some(m))
    }

    fn save(&self, model: &InferenceModel<B, Self>, dir: &Path, _: SaveKind) -> Result<()> {
        let recorder = NamedMpkFileRecorder::<FullPrecisionSettings>::new();
        model.clone().save_file(dir.join("model"), &recorder)?;
        Ok(())
    }

    fn load(
        &self,
        model: ContainsModel<B>,
        dir: &Path,
        device: &Device<B>,
    ) -> Result<ContainsModel<B>> {
        let recorder = NamedMpkFileRecorder::<FullPrecisionSettings>::new();
        Ok(model.load_file(dir.join("model"), &recorder, device)?)
    }
}

/// Fresh random batches, each a function of (seed, step, index): a resumed run draws what an
/// uninterrupted one would, so the position is the step itself (nothing to record).
struct RandomBatches {
    rows: usize,
    seed: u64,
}

impl DataSource<Batch> for RandomBatches {
    type Position = ();

    fn next_step(&mut self, step: u64, count: usize) -> Result<Vec<Batch>> {
        Ok((0..count as u64)
            .map(|i| Batch::random(self.rows, self.seed ^ (step << 8) ^ i))
            .collect())
    }
    fn epoch(&self) -> u64 {
        0
    }
    fn position(&self) {}
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let mut out: Option<PathBuf> = None;
    let (mut resume, mut steps, mut devices) = (false, 60u64, 1usize);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--resume" => resume = true,
            "--steps" => steps = args.next().context("--steps N")?.parse()?,
            "--devices" => devices = args.next().context("--devices N")?.parse()?,
            path => out = Some(path.into()),
        }
    }
    let out = out.context("usage: custom_task OUTPUT_DIR [--resume] [--steps N] [--devices N]")?;
    let device = Default::default();
    let mut training = TrainingSection {
        max_steps: steps,
        eval_every_steps: 20,
        save_every_steps: 20,
        log_every_steps: 10,
        // Two micro-batches a step in all, whatever the replica count.
        gradient_accumulation_steps: 2 / devices.clamp(1, 2),
        ..Default::default()
    };
    training.devices = vec![0; if devices > 1 { devices } else { 0 }];
    let run = RunDir::create(&out, resume, &format!("steps = {steps}\n"))?;
    let devices = trainer::devices::<B>(&device, &training)?;
    let bert = BertConfig {
        vocab_size: VOCAB,
        hidden_size: 32,
        num_hidden_layers: 2,
        num_attention_heads: 2,
        intermediate_size: 64,
        max_position_embeddings: SEQ,
        ..Default::default()
    };
    <B as Backend>::seed(&devices[0], training.seed);
    let model = ContainsModel::<B>::new(&bert, &devices[0]);
    let task = ContainsSeven {
        dev: Batch::random(256, u64::MAX),
    };
    let config = TrainerConfig {
        optimizer: bert_train::trainer::OptimizerConfig {
            learning_rate: 3e-3,
            ..Default::default()
        },
        schedule: Default::default(),
        total_steps: training.max_steps,
        best: BestMetric::maximize("accuracy"),
        what: "training",
        training,
    };
    let trainer = Trainer::new(run, config, devices, model, &task)?;
    let mut data = RandomBatches { rows: 32, seed: 42 };
    trainer.fit(&task, &mut data)?;
    println!("{}", std::fs::read_to_string(out.join("eval.json"))?);
    Ok(())
}
