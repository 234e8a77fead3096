//! # bert-train
//!
//! Training and running BERT models on [Burn](https://burn.dev): the library behind the `bert`
//! binary, for programs that train their own heads or tasks.
//!
//! - [`trainer`]: the training loop, written once ([`trainer::Trainer`]): run directory,
//!   resume, seeding, learning-rate schedule, gradient accumulation, data-parallel replicas
//!   (Burn's collective all-reduce), global-norm clipping, `metrics.jsonl`, evaluation cadence,
//!   `best/`, checkpoints, stopping (max steps, early stopping, Ctrl-C, divergence) and the final
//!   export. A task plugs in through [`trainer::Task`] (its loss, evaluation and saving) and
//!   [`trainer::DataSource`] (the micro-batches of each step).
//! - [`trainer::optim`]: AdamW with no-decay groups and the warmup/decay schedules.
//! - [`pretraining`] and [`finetune`]: BERT's pretraining (MLM + NSP) and the four fine-tuning
//!   task kinds as tasks of the trainer.
//! - [`config`]: the TOML run configs; [`backend`]: run-time backend choice; [`hub`]: model
//!   directories and Hub ids; [`metrics`]: evaluation metrics (F1, seqeval, SQuAD, …).
//! - [`commands`]: the CLI's commands.
//!
//! Training a task of your own (see `examples/custom_task.rs` for a whole program):
//!
//! ```ignore
//! use bert_train::trainer::{BestMetric, RunDir, Trainer, TrainerConfig};
//!
//! let run = RunDir::create("runs/mine".as_ref(), false, "")?;
//! let devices = bert_train::trainer::devices::<B>(&device, &training)?;
//! let config = TrainerConfig {
//!     training,                        // bert_train::config::TrainingSection
//!     optimizer: Default::default(),   // AdamW, BERT's defaults
//!     schedule: Default::default(),
//!     total_steps: 100,
//!     best: BestMetric::maximize("accuracy"),
//!     what: "training",
//! };
//! let trainer = Trainer::new(run, config, devices, model, &task)?;
//! let model = trainer.fit(&task, &mut batches)?;
//! ```

pub mod backend;
pub mod cluster;
pub mod commands;
pub mod config;
pub mod device_memory;
pub mod finetune;
pub mod hub;
pub mod input;
pub mod metrics;
pub mod pretraining;
pub mod progress;
pub mod serve;
pub mod trainer;
