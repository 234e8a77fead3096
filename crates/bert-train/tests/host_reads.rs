//! Host reads per optimizer step, counted on a backend that counts them (`common::counting`:
//! Burn's router over flex, which runs the generic ops a GPU runs). A read or sync stalls a
//! GPU's queue, so a training step reads nothing back: the losses, hit counts and gradient
//! norms stay on the device until a logging, evaluation or save step reads them in one
//! transfer.

mod common;
#[path = "common/counting.rs"]
mod counting;
use common::*;
use counting::{Counting, host_waits};

use std::path::Path;
use std::sync::Mutex;

use anyhow::Result;
use bert_train::config::{Precision, TrainingSection};
use bert_train::trainer::{
    self, BestMetric, DataSource, InferenceModel, Measured, MetricMap, Objective, RunDir, SaveKind,
    Stats, Task, Trainer, TrainerConfig,
};
use burn::backend::Autodiff;
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{DType, Device, Tensor, TensorData};

type B = Autodiff<Counting>;

/// The counters are per process: the tests of this file take turns.
static SERIAL: Mutex<()> = Mutex::new(());

#[derive(Debug, Default)]
struct Rows(usize);

impl Stats for Rows {
    fn merge(&mut self, o: Self) {
        self.0 += o.0;
    }
    fn tokens(&self) -> usize {
        self.0
    }
    fn examples(&self) -> usize {
        self.0
    }
}

/// `y = 2x` by least squares on a one-weight linear model.
struct Fit;

impl<B: AutodiffBackend> Objective<B> for Fit {
    type Model = Linear<B>;
    type Batch = Vec<f32>;
    type Stats = Rows;

    fn loss(
        &self,
        model: &Linear<B>,
        xs: &Vec<f32>,
        device: &Device<B>,
    ) -> Result<Measured<B, Rows>> {
        let n = xs.len();
        let x = Tensor::<B, 2>::from_data(TensorData::new(xs.clone(), [n, 1]), device);
        // In the compute copy's dtype (bf16 under mixed precision), the loss in f32.
        let y = model.forward(x.clone().cast(model.weight.val().dtype()));
        let loss = (y.cast(DType::F32) - x * 2.0).powi_scalar(2).mean();
        Ok(Measured::new(loss, Rows(n)))
    }
}

impl<B: AutodiffBackend> Task<B> for Fit {
    fn describe(&self) -> String {
        "y = 2x".into()
    }
    fn evaluate(&self, _: &InferenceModel<B, Self>, _: &Device<B>) -> Result<Option<MetricMap>> {
        Ok(None)
    }
    fn save(&self, model: &InferenceModel<B, Self>, dir: &Path, _: SaveKind) -> Result<()> {
        let recorder = NamedMpkFileRecorder::<FullPrecisionSettings>::new();
        model.clone().save_file(dir.join("model"), &recorder)?;
        Ok(())
    }
    fn load(&self, model: Linear<B>, dir: &Path, device: &Device<B>) -> Result<Linear<B>> {
        let recorder = NamedMpkFileRecorder::<FullPrecisionSettings>::new();
        Ok(model.load_file(dir.join("model"), &recorder, device)?)
    }
}

/// Batches that note the host waits counted when each step asks for its data.
struct Noting {
    at_step: Vec<usize>,
}

impl DataSource<Vec<f32>> for Noting {
    type Position = ();

    fn next_step(&mut self, step: u64, count: usize) -> Result<Vec<Vec<f32>>> {
        self.at_step.push(host_waits());
        Ok((0..count)
            .map(|k| {
                (0..4)
                    .map(|i| (step as f32 + k as f32 + i as f32) / 8.0)
                    .collect()
            })
            .collect())
    }
    fn epoch(&self) -> u64 {
        0
    }
    fn position(&self) {}
}

/// The trainer reads nothing in a step that neither logs, evaluates nor saves, and one
/// transfer in a logging step (the losses and gradient norms of every step since the last).
#[test]
fn a_step_reads_nothing_until_it_logs() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    generic_ops();
    a_step_reads_nothing_until_it_logs_in(Precision::F32);
    // Mixed precision: the half copy is cast on the device, once per step.
    a_step_reads_nothing_until_it_logs_in(Precision::Bf16);
}

fn a_step_reads_nothing_until_it_logs_in(precision: Precision) {
    let tmp = tempfile::tempdir().expect("tmp");
    let device = Default::default();
    let mut training: TrainingSection = toml::from_str("").expect("defaults");
    training.log_every_steps = 4;
    training.eval_every_steps = 0;
    training.save_every_steps = 0;
    training.gradient_accumulation_steps = 2;
    training.precision = precision;
    let total = 12;
    let run = RunDir::create(&tmp.path().join("run"), false, "").expect("run");
    let devices = trainer::devices::<B>(&device, &training).expect("devices");
    let config = TrainerConfig {
        training,
        optimizer: Default::default(),
        schedule: Default::default(),
        total_steps: total,
        best: BestMetric::minimize("loss"),
        what: "training",
    };
    let model = LinearConfig::new(1, 1).init::<B>(&device);
    let trainer = Trainer::new(run, config, devices, model, &Fit).expect("trainer");
    let mut data = Noting {
        at_step: Vec::new(),
    };
    trainer.fit(&Fit, &mut data).expect("fit");
    // Waits during step s (1-based) = what was counted between asking for its data and
    // asking for the next step's.
    let per_step: Vec<usize> = data.at_step.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(per_step.len(), total as usize - 1);
    for (i, &waits) in per_step.iter().enumerate() {
        let step = i + 1;
        let expected = usize::from(step % 4 == 0);
        assert_eq!(
            waits, expected,
            "{precision}, step {step}: {waits} host reads (all steps: {per_step:?})"
        );
    }
}

/// The generic ops, as on a GPU (the counting backend's device is flex's, which would
/// otherwise take the CPU kernels), for the rest of this process.
fn generic_ops() {
    bert_model::ops::set_fused_kernels(false);
}

/// `run(name, overrides)` trains a run with the config overrides and returns the host waits it
/// counted. A longer run must wait exactly as often as a shorter one when neither logs,
/// evaluates nor saves before its end (its extra steps read nothing), and logging every step
/// must add exactly one read per step (the counter sees the reads).
fn reads_nothing_between_logs(run: impl Fn(&str, &[String]) -> usize) {
    let sets = |steps: u64, log_every: u64| {
        vec![
            format!("training.max_steps={steps}"),
            format!("training.log_every_steps={log_every}"),
            "training.eval_every_steps=0".to_string(),
            "training.save_every_steps=0".to_string(),
        ]
    };
    let short = run("short", &sets(2, 100));
    let long = run("long", &sets(6, 100));
    assert_eq!(
        short,
        long,
        "4 more steps, {} more host reads",
        long - short
    );
    let logged = run("logged", &sets(6, 1));
    assert_eq!(logged, long + 5, "one read per logging step");
}

#[test]
fn pretraining_steps_read_nothing_between_logs() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    generic_ops();
    let tmp = tempfile::tempdir().expect("tmp");
    reads_nothing_between_logs(|name, sets| {
        let cfg = pretrain_config(tmp.path(), name);
        let (config, _) =
            bert_train::config::load::<bert_train::config::PretrainConfig>(&cfg, sets)
                .expect("config");
        let before = host_waits();
        bert_train::pretraining::train::<B>(&config, false, &Default::default()).expect("train");
        host_waits() - before
    });
}

/// The same for fine-tuning (sequence classification on the tiny MLM fixture).
#[test]
fn fine_tuning_steps_read_nothing_between_logs() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    generic_ops();
    let tmp = tempfile::tempdir().expect("tmp");
    reads_nothing_between_logs(|name, sets| {
        let cfg = finetune_config(tmp.path(), name);
        let (config, _) =
            bert_train::config::load::<bert_train::config::FinetuneConfig>(&cfg, sets)
                .expect("config");
        let run = RunDir::create(&config.output.dir, false, "").expect("run");
        let setup = bert_train::finetune::Setup::new(config, Some(run)).expect("setup");
        let before = host_waits();
        bert_train::finetune::train::<B>(&setup, &Default::default()).expect("train");
        host_waits() - before
    });
}

/// A pretraining config on the tiny fixture corpus (2 layers of 32).
fn pretrain_config(dir: &Path, name: &str) -> std::path::PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "[model]\npreset = \"tiny\"\nhidden_size = 32\nnum_attention_heads = 2\nintermediate_size = 64\nmax_position_embeddings = 64\n\n[data]\ntokenizer = \"{}\"\ntrain_files = [\"{}/*.txt\"]\nvalid_files = [\"{}/moby.txt\"]\nprepared_dir = \"{}/prepared\"\nmax_seq_length = 32\n\n[training]\nbatch_size = 4\neval_batches = 2\n\n[output]\ndir = \"{}\"\n",
            minilm_dir().display(),
            root().join("tests/fixtures/corpus").display(),
            root().join("tests/fixtures/corpus").display(),
            dir.display(),
            dir.join(name).display()
        ),
    )
    .expect("config");
    path
}

/// A sequence-classification config on the tiny MLM fixture.
fn finetune_config(dir: &Path, name: &str) -> std::path::PathBuf {
    let data = dir.join("data.tsv");
    let mut text = String::from("text\tlabel\n");
    for i in 0..16 {
        let words = if i % 2 == 0 {
            "w5 w6 w7"
        } else {
            "w40 w41 w42 w43"
        };
        text.push_str(&format!(
            "{words}\t{}\n",
            if i % 2 == 0 { "pos" } else { "neg" }
        ));
    }
    std::fs::write(&data, text).expect("data");
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "[model]\ninit_from = \"{}\"\n\n[task]\nkind = \"sequence-classification\"\ntrain_file = \"{}\"\nvalid_file = \"{}\"\nmax_length = 16\n\n[training]\nbatch_size = 4\n\n[output]\ndir = \"{}\"\n",
            root().join("tests/fixtures/tiny-bert/BertForMaskedLM").display(),
            data.display(),
            data.display(),
            dir.join(name).display()
        ),
    )
    .expect("config");
    path
}
