//! The trainer in-process, on a task small enough to run in milliseconds: a linear regression
//! (`y = x · w*`) with mean squared error. Checks what the loop owns: exact resume, data
//! parallelism against accumulation, `best/` by the metric's direction, early stopping,
//! divergence, and the files a run writes.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Result;
use bert_train::config::TrainingSection;
use bert_train::trainer::{
    self, BestMetric, DataSource, InferenceModel, Measured, MetricMap, Objective, RunDir, SaveKind,
    Stats, Task, Trainer, TrainerConfig,
};
use burn::backend::{Autodiff, Flex};
use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Device, ElementConversion, Tensor, TensorData};
use rand::{Rng, SeedableRng};

type B = Autodiff<Flex>;
const IN: usize = 4;

#[derive(Debug, Clone)]
struct Batch {
    x: Vec<f32>,
    y: Vec<f32>,
}

impl Batch {
    fn random(rows: usize, seed: u64) -> Self {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let w = [0.5f32, -1.0, 2.0, 0.25];
        let mut x = Vec::new();
        let mut y = Vec::new();
        for _ in 0..rows {
            let row: Vec<f32> = (0..IN).map(|_| rng.random_range(-1.0..1.0)).collect();
            y.push(row.iter().zip(&w).map(|(a, b)| a * b).sum());
            x.extend(row);
        }
        Self { x, y }
    }

    fn mse<B: Backend>(&self, model: &Linear<B>, device: &Device<B>) -> Tensor<B, 1> {
        let n = self.y.len();
        let x = Tensor::<B, 2>::from_data(TensorData::new(self.x.clone(), [n, IN]), device);
        let y = Tensor::<B, 2>::from_data(TensorData::new(self.y.clone(), [n, 1]), device);
        (model.forward(x) - y).powi_scalar(2).mean()
    }
}

#[derive(Debug, Default)]
struct Sum {
    rows: usize,
}

impl Stats for Sum {
    fn merge(&mut self, o: Self) {
        self.rows += o.rows;
    }
    fn tokens(&self) -> usize {
        self.rows
    }
    fn examples(&self) -> usize {
        self.rows
    }
}

/// How a forward pass fails on purpose.
#[derive(Debug, Clone, Copy)]
enum Fault {
    Error,
    Panic,
}

/// The regression task; `score` is the metric evaluations report (by default the dev MSE),
/// `nan_at` makes the loss NaN from that forward pass on, `fail_at` fails that forward pass.
struct Regression {
    dev: Batch,
    score: fn(step: u64, mse: f64) -> f64,
    nan_at: Option<u64>,
    fail_at: Option<(u64, Fault)>,
    forwards: AtomicU64,
    evaluations: AtomicU64,
}

impl Regression {
    fn new() -> Self {
        Self {
            dev: Batch::random(64, 999),
            score: |_, mse| mse,
            nan_at: None,
            fail_at: None,
            forwards: AtomicU64::new(0),
            evaluations: AtomicU64::new(0),
        }
    }
}

impl<B: AutodiffBackend> Objective<B> for Regression {
    type Model = Linear<B>;
    type Batch = Batch;
    type Stats = Sum;

    fn loss(
        &self,
        model: &Linear<B>,
        batch: &Batch,
        device: &Device<B>,
    ) -> Result<Measured<B, Sum>> {
        let forward = self.forwards.fetch_add(1, Ordering::SeqCst);
        match self.fail_at {
            Some((f, Fault::Error)) if f == forward => anyhow::bail!("injected failure"),
            Some((f, Fault::Panic)) if f == forward => panic!("injected panic"),
            _ => {}
        }
        let mut loss = batch.mse(model, device);
        if self.nan_at.is_some_and(|s| forward >= s) {
            loss = loss * f32::NAN;
        }
        let stats = Sum {
            rows: batch.y.len(),
        };
        Ok(Measured::new(loss, stats))
    }
}

impl<B: AutodiffBackend> Task<B> for Regression {
    fn describe(&self) -> String {
        "a linear regression".into()
    }

    fn evaluate(
        &self,
        model: &InferenceModel<B, Self>,
        device: &Device<B>,
    ) -> Result<Option<MetricMap>> {
        let k = self.evaluations.fetch_add(1, Ordering::SeqCst) + 1;
        let mse = f64::from(self.dev.mse(model, device).into_scalar().elem::<f32>());
        let mut m = MetricMap::new();
        m.insert("score".into(), (self.score)(k, mse).into());
        Ok(Some(m))
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

/// Batches keyed by (step, index): the position is the step.
struct Batches;

impl DataSource<Batch> for Batches {
    type Position = ();
    fn next_step(&mut self, step: u64, count: usize) -> Result<Vec<Batch>> {
        Ok((0..count as u64)
            .map(|i| Batch::random(8, step * 1000 + i))
            .collect())
    }
    fn epoch(&self) -> u64 {
        0
    }
    fn position(&self) {}
}

fn training(steps: u64) -> TrainingSection {
    TrainingSection {
        max_steps: steps,
        eval_every_steps: 2,
        save_every_steps: 3,
        log_every_steps: 1,
        ..Default::default()
    }
}

/// The initial model, the same in every test: fixed weights, not Burn's RNG, which is one per
/// process and shared by the tests running in parallel.
fn model(device: &Device<B>) -> Linear<B> {
    let mut linear = LinearConfig::new(IN, 1).init::<B>(device);
    linear.weight = Param::from_tensor(Tensor::from_floats([[0.1], [0.2], [-0.3], [0.05]], device));
    linear.bias = Some(Param::from_tensor(Tensor::from_floats([0.0], device)));
    linear
}

/// Trains `task` in `dir` as `training` says; the weights at the end.
fn train(
    dir: &Path,
    resume: bool,
    training: TrainingSection,
    best: BestMetric,
    task: &Regression,
) -> Result<Vec<f32>> {
    let device = Default::default();
    let run = RunDir::create(dir, resume, "")?;
    let devices = trainer::devices::<B>(&device, &training)?;
    let model = model(&device);
    let config = TrainerConfig {
        total_steps: training.max_steps,
        training,
        optimizer: trainer::OptimizerConfig {
            learning_rate: 0.3,
            ..Default::default()
        },
        schedule: Default::default(),
        best,
        what: "training",
    };
    let trainer = Trainer::new(run, config, devices, model, task)?;
    let model = trainer.fit(task, &mut Batches)?;
    Ok(model.weight.val().into_data().to_vec::<f32>().expect("f32"))
}

fn metrics(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .expect("metrics.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect()
}

#[test]
fn a_run_learns_and_writes_its_files() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("run");
    train(
        &dir,
        false,
        training(12),
        BestMetric::minimize("score"),
        &Regression::new(),
    )
    .expect("train");
    for f in [
        "config.toml",
        "metrics.jsonl",
        "eval.json",
        "final/model.mpk",
        "best/eval.json",
    ] {
        assert!(dir.join(f).is_file(), "{f}");
    }
    let lines = metrics(&dir);
    let losses: Vec<f64> = lines
        .iter()
        .filter(|l| l["split"] == "train")
        .map(|l| l["loss"].as_f64().expect("loss"))
        .collect();
    assert_eq!(losses.len(), 12, "a train line per step");
    let (first, last) = (
        losses[..3].iter().sum::<f64>(),
        losses[9..].iter().sum::<f64>(),
    );
    assert!(last < first * 0.5, "the loss falls: {losses:?}");
    assert_eq!(lines.iter().filter(|l| l["split"] == "eval").count(), 6);
    // Checkpoints at 3, 6, 9, 12; the newest two kept.
    let kept: Vec<u64> = trainer::checkpoint_dirs(&dir)
        .iter()
        .map(|(s, _)| *s)
        .collect();
    assert_eq!(kept, vec![9, 12]);
    // A second run into the same directory is refused.
    let err = train(
        &dir,
        false,
        training(12),
        BestMetric::minimize("score"),
        &Regression::new(),
    )
    .expect_err("no overwrite");
    assert!(format!("{err:#}").contains("--resume"), "{err:#}");
}

#[test]
fn a_stopped_and_resumed_run_ends_with_the_uninterrupted_weights() {
    let tmp = tempfile::tempdir().expect("tmp");
    let best = || BestMetric::minimize("score");
    let full = train(
        &tmp.path().join("full"),
        false,
        training(10),
        best(),
        &Regression::new(),
    )
    .expect("full");
    let split = tmp.path().join("split");
    let mut first = training(10);
    first.stop_after_steps = Some(4);
    train(&split, false, first, best(), &Regression::new()).expect("first half");
    assert!(!split.join("final").exists(), "a stopped run has no final/");
    let resumed = train(&split, true, training(10), best(), &Regression::new()).expect("resume");
    assert_eq!(full, resumed);
    // The resumed run continued the step count and the schedule.
    let steps: Vec<u64> = metrics(&split)
        .iter()
        .filter(|l| l["split"] == "train")
        .map(|l| l["step"].as_u64().expect("step"))
        .collect();
    assert_eq!(steps, (1..=10).collect::<Vec<_>>());
}

#[test]
fn two_replicas_train_like_one_accumulating_two_micro_batches() {
    let tmp = tempfile::tempdir().expect("tmp");
    let best = || BestMetric::minimize("score");
    let mut acc = training(6);
    acc.gradient_accumulation_steps = 2;
    let one = train(
        &tmp.path().join("acc"),
        false,
        acc,
        best(),
        &Regression::new(),
    )
    .expect("acc");
    let mut ddp = training(6);
    ddp.devices = vec![0, 0];
    let two = train(
        &tmp.path().join("ddp"),
        false,
        ddp,
        best(),
        &Regression::new(),
    )
    .expect("ddp");
    for (a, b) in one.iter().zip(&two) {
        assert!((a - b).abs() < 1e-6, "{one:?} vs {two:?}");
    }
    // Without the all-reduce each replica would step on its own batch: not the same weights.
    let alone = train(
        &tmp.path().join("one"),
        false,
        training(6),
        best(),
        &Regression::new(),
    )
    .expect("one");
    assert!(one.iter().zip(&alone).any(|(a, b)| (a - b).abs() > 1e-4));
}

#[test]
fn best_follows_the_metric_direction_and_patience_stops_the_run() {
    let tmp = tempfile::tempdir().expect("tmp");
    let best_step = |dir: &Path| -> u64 {
        let eval: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join("best/eval.json")).expect("best/eval.json"),
        )
        .expect("json");
        eval["step"].as_u64().expect("step")
    };
    // Evaluations at steps 2, 4, 6, 8, 10 score 1, 3, 5, 4, 2: the best is at step 6 when
    // larger is better, step 2 when smaller is.
    let peaked = || Regression {
        score: |k, _| [1.0, 3.0, 5.0, 4.0, 2.0][(k as usize - 1).min(4)],
        ..Regression::new()
    };
    let up = tmp.path().join("up");
    train(
        &up,
        false,
        training(10),
        BestMetric::maximize("score"),
        &peaked(),
    )
    .expect("up");
    assert_eq!(best_step(&up), 6);
    let down = tmp.path().join("down");
    train(
        &down,
        false,
        training(10),
        BestMetric::minimize("score"),
        &peaked(),
    )
    .expect("down");
    assert_eq!(best_step(&down), 2);
    // Patience 2: no improvement at steps 8 and 10 would stop at 10 = the end; with
    // patience 1 the run stops after the step-8 evaluation, with final/.
    let mut t = training(10);
    t.early_stopping_patience = Some(1);
    let early = tmp.path().join("early");
    train(&early, false, t, BestMetric::maximize("score"), &peaked()).expect("early");
    let last = metrics(&early).last().cloned().expect("lines");
    assert_eq!(last["step"], 8, "{last}");
    assert!(early.join("final/model.mpk").is_file());
    // A metric the evaluation does not report is an error naming it.
    let err = train(
        &tmp.path().join("typo"),
        false,
        training(4),
        BestMetric::maximize("acuracy"),
        &Regression::new(),
    )
    .expect_err("unknown metric");
    assert!(format!("{err:#}").contains("acuracy"), "{err:#}");
}

#[test]
fn a_non_finite_loss_stops_the_run_without_saving_it() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("nan");
    let task = Regression {
        nan_at: Some(4),
        ..Regression::new()
    };
    let err = train(
        &dir,
        false,
        training(10),
        BestMetric::minimize("score"),
        &task,
    )
    .expect_err("diverges");
    let msg = format!("{err:#}");
    assert!(msg.contains("loss is NaN at step 5"), "{msg}");
    assert!(!dir.join("final").exists());
    let kept: Vec<u64> = trainer::checkpoint_dirs(&dir)
        .iter()
        .map(|(s, _)| *s)
        .collect();
    assert_eq!(kept, vec![3], "only the good checkpoint");
}

#[test]
fn weights_that_overflow_are_never_saved() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("inf");
    let device = Default::default();
    let mut t = training(4);
    t.save_every_steps = 1;
    let run = RunDir::create(&dir, false, "").expect("run");
    let devices = trainer::devices::<B>(&device, &t).expect("devices");
    let config = TrainerConfig {
        total_steps: 4,
        training: t,
        // Adam's first step moves every weight by about the learning rate: past f32's range.
        optimizer: trainer::OptimizerConfig {
            learning_rate: 1e39,
            ..Default::default()
        },
        schedule: Default::default(),
        best: BestMetric::minimize("score"),
        what: "training",
    };
    let task = Regression::new();
    let model = model(&device);
    let trainer = Trainer::new(run, config, devices, model, &task).expect("trainer");
    let err = trainer.fit(&task, &mut Batches).expect_err("overflows");
    assert!(
        format!("{err:#}").contains("the weights are not finite at step 1"),
        "{err:#}"
    );
    assert!(
        trainer::checkpoint_dirs(&dir).is_empty(),
        "no checkpoint written"
    );
    assert!(!dir.join("best").exists() && !dir.join("final").exists());
}

#[test]
fn a_mis_shaped_optimizer_state_is_an_error_naming_the_tensor() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("run");
    let mut first = training(6);
    first.stop_after_steps = Some(3);
    let best = || BestMetric::minimize("score");
    train(&dir, false, first, best(), &Regression::new()).expect("first half");
    let (_, checkpoint) = trainer::checkpoint_dirs(&dir).pop().expect("a checkpoint");
    let path = checkpoint.join("optimizer.safetensors");
    let bytes = std::fs::read(&path).expect("optimizer state");
    let state = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    let short = vec![0u8; 4 * 3];
    let mut tensors: Vec<(String, safetensors::tensor::TensorView<'_>)> = Vec::new();
    for (name, view) in state.tensors() {
        let view = if name == "m.weight" {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![3], &short)
                .expect("view")
        } else {
            view
        };
        tensors.push((name, view));
    }
    std::fs::write(
        &path,
        safetensors::serialize(tensors, None).expect("serialize"),
    )
    .expect("write");
    let err = train(&dir, true, training(6), best(), &Regression::new()).expect_err("bad state");
    let msg = format!("{err:#}");
    assert!(msg.contains("m.weight") && msg.contains("[3]"), "{msg}");
}

#[test]
fn a_failing_replica_ends_a_data_parallel_run_with_its_message() {
    for (fault, message) in [
        (Fault::Error, "injected failure"),
        (Fault::Panic, "injected panic"),
    ] {
        for fail_at in [4, 5] {
            // Forward passes 4 and 5 are step 3's, on one replica or the other.
            let (done, result) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let tmp = tempfile::tempdir().expect("tmp");
                let mut t = training(8);
                t.devices = vec![0, 0];
                let task = Regression {
                    fail_at: Some((fail_at, fault)),
                    ..Regression::new()
                };
                let out = train(
                    &tmp.path().join("run"),
                    false,
                    t,
                    BestMetric::minimize("score"),
                    &task,
                );
                let _ = done.send(out.map(|_| ()).map_err(|e| format!("{e:#}")));
            });
            let out = result
                .recv_timeout(std::time::Duration::from_secs(60))
                .expect("the run ends instead of hanging in an all-reduce");
            let err = out.expect_err("the run fails");
            assert!(err.contains(message) && err.contains("replica"), "{err}");
        }
    }
}
