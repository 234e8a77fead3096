//! Run configs (TOML): `[model]`, `[data]` (pretraining) or `[task]` (fine-tuning),
//! `[optimizer]`, `[schedule]`, `[training]`, `[output]`. Unknown keys are errors naming the key
//! and the file, and so are `[training]` keys of the other run kind ([`RunConfig`]); `--set
//! a.b=v` overrides any value (read as TOML: `3e-5`, `true`, `["x.txt"]`; a bare word is a
//! string).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use bert_data::pretraining::PretrainingDataConfig;
use bert_model::BertConfig;
use serde::{Deserialize, Serialize};

use crate::finetune::TaskSection;
use crate::trainer::{OptimizerConfig, ScheduleConfig};

/// `[model]`: a preset and/or BertConfig keys, or `init_from` (HF directory or Hub id).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelSection {
    /// Start from these weights (and their config.json).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_from: Option<String>,
    /// Everything else: `preset` and BertConfig keys, checked by `BertConfig::from_toml_table`.
    #[serde(flatten)]
    pub fields: toml::Table,
}

/// `[training]`: the loop's settings. Most keys serve both run kinds; the few that only one
/// uses are refused in the other's config ([`PRETRAINING_ONLY`], [`FINETUNING_ONLY`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingSection {
    /// Optimizer steps in all.
    #[serde(default = "d::max_steps")]
    pub max_steps: u64,
    /// Passes over the data (fine-tuning); when set it decides the number of steps and
    /// `max_steps` is ignored.
    #[serde(default)]
    pub epochs: Option<u64>,
    /// Sequences per optimizer step (before accumulation).
    #[serde(default = "d::batch_size")]
    pub batch_size: usize,
    /// Micro-batches whose gradients are averaged per step.
    #[serde(default = "d::one")]
    pub gradient_accumulation_steps: usize,
    /// Seed of data order, masking, dropout and initialisation.
    #[serde(default = "d::seed")]
    pub seed: u64,
    /// Evaluate every N steps (0: only at the end).
    #[serde(default)]
    pub eval_every_steps: u64,
    /// Batches per evaluation.
    #[serde(default = "d::eval_batches")]
    pub eval_batches: usize,
    /// Checkpoint every N steps (0: only at the end).
    #[serde(default)]
    pub save_every_steps: u64,
    /// Checkpoints kept (the newest; the best is kept too).
    #[serde(default = "d::keep")]
    pub keep_checkpoints: usize,
    /// Log a train line every N steps.
    #[serde(default = "d::log_every")]
    pub log_every_steps: u64,
    /// Stop (with a checkpoint, as on Ctrl-C) once this step is reached, keeping the schedule
    /// of `max_steps`: train a long run in chunks with `--resume`.
    #[serde(default)]
    pub stop_after_steps: Option<u64>,
    /// cpu, wgpu or cuda (default: the best compiled in).
    #[serde(default)]
    pub backend: Option<String>,
    /// Devices for data-parallel training (pretraining and fine-tuning): indices of the
    /// backend's devices (e.g. `[0, 1]` for two GPUs), one replica each, gradients averaged with
    /// Burn's collective all-reduce; `batch_size` is per device. Empty (the default): the backend's default device.
    #[serde(default)]
    pub devices: Vec<usize>,
    /// Compute precision: `f32`, or `bf16` / `f16` mixed precision (f32 master weights and
    /// optimizer state, matrix products in the half type, LayerNorm, softmax and losses in f32)
    /// where the backend supports the type.
    #[serde(default)]
    pub precision: Precision,
    /// Pretraining batches prepared ahead on a worker thread (cutting, masking, padding), so
    /// the step does not wait for them; 0 prepares each batch on the training thread.
    /// `data_wait_fraction` in metrics.jsonl shows how much of the time the step waited.
    #[serde(default = "d::prefetch")]
    pub prefetch_batches: usize,
    /// Dev metric that picks `best/` (default: the task's main one, e.g. accuracy, f1,
    /// pearson; loss-like names count lower as better).
    #[serde(default)]
    pub metric_for_best: Option<String>,
    /// Stop after this many evaluations without a better `metric_for_best` (off when unset).
    #[serde(default)]
    pub early_stopping_patience: Option<u64>,
    /// Fine-tuning: batch examples of similar length together (as transformers'
    /// `group_by_length`): each epoch's shuffled order is cut into mega-batches of up to 50
    /// batches, each sorted longest first, the longest mega-batch's head moved to the front.
    /// Less padding per batch; the order stays seeded.
    #[serde(default)]
    pub group_by_length: bool,
}

/// `training.precision`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in f32.
    #[default]
    F32,
    /// bfloat16 compute, f32 master weights.
    Bf16,
    /// float16 compute, f32 master weights (no loss scaling: prefer bf16 where it exists).
    F16,
}

impl Precision {
    /// The compute dtype.
    pub fn dtype(self) -> burn::tensor::DType {
        match self {
            Self::F32 => burn::tensor::DType::F32,
            Self::Bf16 => burn::tensor::DType::BF16,
            Self::F16 => burn::tensor::DType::F16,
        }
    }

    /// Fails in one line when the backend cannot compute in this precision.
    pub fn check<B: burn::tensor::backend::Backend>(self, device: &B::Device) -> Result<()> {
        if !B::supports_dtype(device, self.dtype()) {
            bail!(
                "training.precision = \"{self}\" is not supported on device {device:?} (use f32; bf16/f16 run on the default CPU backend, and on CUDA and wgpu where the GPU has them)"
            );
        }
        Ok(())
    }

    /// The module to run the forward pass with in a half precision: `None` in f32 (the model
    /// itself), else its half copy ([`bert_model::precision::compute_copy`]) cast from the
    /// model's values as leaves of their own, with the master's parameter ids: gradients of a
    /// loss are then taken with respect to the copy, so that one copy serves every micro-batch
    /// of a step (see [`crate::trainer::optim::f32_gradients`]).
    pub fn compute_leaves<B: burn::tensor::backend::AutodiffBackend, M: burn::module::Module<B>>(
        self,
        model: &M,
    ) -> Option<M> {
        match self {
            Self::F32 => None,
            _ => Some(bert_model::precision::compute_leaves(model, self.dtype())),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
            Self::F16 => "f16",
        })
    }
}

mod d {
    pub fn max_steps() -> u64 {
        1000
    }
    pub fn batch_size() -> usize {
        32
    }
    pub fn one() -> usize {
        1
    }
    pub fn seed() -> u64 {
        42
    }
    pub fn eval_batches() -> usize {
        20
    }
    pub fn keep() -> usize {
        2
    }
    pub fn log_every() -> u64 {
        10
    }
    pub fn prefetch() -> usize {
        2
    }
}

impl Default for TrainingSection {
    fn default() -> Self {
        toml::from_str("").unwrap_or_else(|_| unreachable!("every field has a default"))
    }
}

/// `[output]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSection {
    /// Run directory: config.toml, metrics.jsonl, checkpoints/, final/.
    pub dir: PathBuf,
}

/// `[distributed]`: a multi-node run whose nodes are started one by one, the same command on
/// every machine with its own `node_rank` (torchrun's model; see [`crate::cluster`]). Runs
/// started by an MPI launcher (`mpirun`, `bert launch`) take their ranks from it instead, and
/// need none of these keys.
///
/// The environment variables torchrun users know set them too, over the config file (and
/// `--set` over both): `WORLD_SIZE` → `nodes`, `RANK` (or `NODE_RANK`) → `node_rank`,
/// `MASTER_ADDR` and `MASTER_PORT` → `coordinator`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DistributedSection {
    /// The run's processes ("nodes"), each training on its own `training.devices`: 1, one
    /// process.
    pub nodes: usize,
    /// This node's rank, `0..nodes`: node 0 is the coordinator, evaluates and writes. Each
    /// node has its own, so it is left out of the configuration the nodes compare and the run
    /// directory keeps.
    pub node_rank: usize,
    /// `host:port` at which node 0 listens for the others (an address of node 0 that every
    /// node reaches); needed when `nodes > 1`.
    pub coordinator: Option<String>,
    /// Seconds the nodes wait for each other at start-up.
    pub join_timeout_s: u64,
}

impl Default for DistributedSection {
    fn default() -> Self {
        Self {
            nodes: 1,
            node_rank: 0,
            coordinator: None,
            join_timeout_s: 300,
        }
    }
}

/// `[distributed]` keys from torchrun's environment variables (see [`DistributedSection`]),
/// as `--set` would give them; `env` reads a variable.
fn distributed_from_env(
    env: impl Fn(&str) -> Option<String>,
) -> Result<Vec<(String, toml::Value)>> {
    let number = |name: &str, key: &str| -> Result<Option<(String, toml::Value)>> {
        let Some(text) = env(name) else {
            return Ok(None);
        };
        let value: i64 = text
            .trim()
            .parse()
            .ok()
            .filter(|v| *v >= 0)
            .with_context(|| format!("environment variable {name}={text:?}: not a count"))?;
        Ok(Some((key.to_string(), toml::Value::Integer(value))))
    };
    let mut keys = Vec::new();
    keys.extend(number("WORLD_SIZE", "nodes")?);
    match number("RANK", "node_rank")? {
        Some(rank) => keys.push(rank),
        None => keys.extend(number("NODE_RANK", "node_rank")?),
    }
    match (env("MASTER_ADDR"), env("MASTER_PORT")) {
        (Some(addr), Some(port)) => keys.push((
            "coordinator".to_string(),
            toml::Value::String(format!("{}:{}", addr.trim(), port.trim())),
        )),
        (None, None) => {}
        _ => bail!("MASTER_ADDR and MASTER_PORT go together (the coordinator's host and port)"),
    }
    Ok(keys)
}

/// A `[distributed]` section alone: torchrun's environment variables, then `overrides`
/// (`distributed.key=value`, as `--set` takes them).
pub fn distributed_section(overrides: &[String]) -> Result<DistributedSection> {
    let mut table = toml::Table::new();
    for (key, value) in distributed_from_env(|name| std::env::var(name).ok())? {
        apply_override(&mut table, &["distributed".to_string(), key], value)?;
    }
    for o in overrides {
        let (key, value) = parse_override(o)?;
        if key.first().map(String::as_str) != Some("distributed") {
            bail!("--set {o:?}: only distributed.* keys here");
        }
        apply_override(&mut table, &key, value)?;
    }
    let section = table
        .remove("distributed")
        .unwrap_or_else(|| toml::Value::Table(toml::Table::new()));
    section
        .try_into()
        .map_err(|e: toml::de::Error| anyhow::anyhow!("[distributed]: {}", e.message().trim()))
}

/// A pretraining run config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PretrainConfig {
    /// Model.
    #[serde(default)]
    pub model: ModelSection,
    /// Corpus, sequence cutting and masking.
    #[serde(default)]
    pub data: PretrainingDataConfig,
    /// AdamW.
    #[serde(default)]
    pub optimizer: OptimizerConfig,
    /// Learning-rate schedule.
    #[serde(default)]
    pub schedule: ScheduleConfig,
    /// Loop settings.
    #[serde(default)]
    pub training: TrainingSection,
    /// Nodes of a multi-node run.
    #[serde(default)]
    pub distributed: DistributedSection,
    /// Where results go.
    pub output: OutputSection,
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
    /// Nodes of a multi-node run.
    #[serde(default)]
    pub distributed: DistributedSection,
    /// Results.
    pub output: OutputSection,
}

/// `[training]` keys that only pretraining uses.
pub const PRETRAINING_ONLY: &[&str] = &["eval_batches", "prefetch_batches"];
/// `[training]` keys that only fine-tuning uses.
pub const FINETUNING_ONLY: &[&str] = &[
    "epochs",
    "metric_for_best",
    "early_stopping_patience",
    "group_by_length",
];

/// A run kind's config file.
pub trait RunConfig: serde::de::DeserializeOwned {
    /// What the run kind is called in messages.
    const KIND: &'static str;
    /// `[training]` keys of the other run kind, refused in this one's config.
    const FOREIGN_TRAINING_KEYS: &'static [&'static str];
}

impl RunConfig for PretrainConfig {
    const KIND: &'static str = "pretraining";
    const FOREIGN_TRAINING_KEYS: &'static [&'static str] = FINETUNING_ONLY;
}

impl RunConfig for FinetuneConfig {
    const KIND: &'static str = "fine-tuning";
    const FOREIGN_TRAINING_KEYS: &'static [&'static str] = PRETRAINING_ONLY;
}

/// Parses `--set key.path=value`: the value as TOML, or a bare string.
pub fn parse_override(text: &str) -> Result<(Vec<String>, toml::Value)> {
    let (key, value) = text
        .split_once('=')
        .with_context(|| format!("--set {text:?}: expected key.path=value"))?;
    let path: Vec<String> = key.trim().split('.').map(str::to_string).collect();
    if path.iter().any(String::is_empty) {
        bail!("--set {text:?}: empty key segment");
    }
    let value = value.trim();
    let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()));
    Ok((path, parsed))
}

fn apply_override(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<()> {
    let (last, parents) = path.split_last().context("empty key")?;
    let mut current = table;
    for p in parents {
        let entry = current
            .entry(p.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = entry
            .as_table_mut()
            .with_context(|| format!("--set: {p} is not a table"))?;
    }
    current.insert(last.clone(), value);
    Ok(())
}

/// Reads a config file, applies `--set` overrides, and deserialises it strictly: unknown keys
/// and `[training]` keys of the other run kind are errors naming the key and the file.
pub fn load<T: RunConfig>(path: &Path, overrides: &[String]) -> Result<(T, toml::Table)> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config {}", path.display()))?;
    let mut table: toml::Table =
        toml::from_str(&text).with_context(|| format!("{}: invalid TOML", path.display()))?;
    for (key, value) in distributed_from_env(|name| std::env::var(name).ok())? {
        apply_override(&mut table, &["distributed".to_string(), key], value)?;
    }
    for o in overrides {
        let (key, value) = parse_override(o)?;
        apply_override(&mut table, &key, value)?;
    }
    if let Some(training) = table.get("training").and_then(toml::Value::as_table)
        && let Some(key) = T::FOREIGN_TRAINING_KEYS
            .iter()
            .find(|k| training.contains_key(**k))
    {
        bail!(
            "invalid config {}: training.{key} is not used by {} runs",
            path.display(),
            T::KIND
        );
    }
    let config: T = table
        .clone()
        .try_into()
        .map_err(|e: toml::de::Error| anyhow::anyhow!("{}: {}", path.display(), e.message().trim()))
        .with_context(|| format!("invalid config {}", path.display()))?;
    Ok((config, table))
}

impl ModelSection {
    /// The model config: `init_from`'s config.json (with `[model]` keys over it), or a preset
    /// with overrides.
    pub fn bert_config(&self, init_dir: Option<&Path>) -> Result<BertConfig> {
        match init_dir {
            Some(dir) => {
                let mut config = bert_model::load_config(dir)?;
                if !self.fields.is_empty() {
                    let mut base =
                        toml::Table::try_from(&config).context("cannot merge [model] keys")?;
                    for (k, v) in &self.fields {
                        base.insert(k.clone(), v.clone());
                    }
                    config = BertConfig::from_toml_table(base)?;
                }
                Ok(config)
            }
            None => Ok(BertConfig::from_toml_table(self.fields.clone())?),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torchrun_environment_variables_set_distributed() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        let keys = distributed_from_env(env(&[
            ("WORLD_SIZE", "4"),
            ("RANK", "2"),
            ("NODE_RANK", "1"),
            ("MASTER_ADDR", "10.0.0.1"),
            ("MASTER_PORT", "29500"),
        ]))
        .expect("valid");
        let mut table = toml::Table::new();
        for (key, value) in keys {
            apply_override(&mut table, &["distributed".into(), key], value).expect("set");
        }
        let section: DistributedSection = table["distributed"].clone().try_into().expect("ok");
        assert_eq!(
            section,
            DistributedSection {
                nodes: 4,
                node_rank: 2,
                coordinator: Some("10.0.0.1:29500".into()),
                join_timeout_s: 300,
            }
        );
        let node_rank = distributed_from_env(env(&[("NODE_RANK", "3")])).expect("valid");
        assert_eq!(
            node_rank,
            vec![("node_rank".into(), toml::Value::Integer(3))]
        );
        assert!(distributed_from_env(env(&[])).expect("none").is_empty());
        let err = distributed_from_env(env(&[("WORLD_SIZE", "two")])).expect_err("not a count");
        assert!(format!("{err:#}").contains("WORLD_SIZE=\"two\""), "{err:#}");
        let err = distributed_from_env(env(&[("MASTER_ADDR", "h")])).expect_err("no port");
        assert!(format!("{err:#}").contains("MASTER_PORT"), "{err:#}");
    }

    #[test]
    fn overrides_are_toml_or_bare_strings() {
        assert_eq!(
            parse_override("training.max_steps=20").expect("ok").1,
            toml::Value::Integer(20)
        );
        assert_eq!(
            parse_override("optimizer.learning_rate=3e-5")
                .expect("ok")
                .1,
            toml::Value::Float(3e-5)
        );
        assert_eq!(
            parse_override("data.train_files=[\"x.txt\"]")
                .expect("ok")
                .1,
            toml::Value::Array(vec![toml::Value::String("x.txt".into())])
        );
        assert_eq!(
            parse_override("training.backend=cpu").expect("ok").1,
            toml::Value::String("cpu".into())
        );
        assert!(parse_override("novalue").is_err());
    }

    #[test]
    fn unknown_keys_name_the_key_and_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("run.toml");
        std::fs::write(&path, "[training]\nmax_step = 3\n[output]\ndir = \"x\"\n").expect("write");
        let err = load::<PretrainConfig>(&path, &[]).expect_err("typo");
        let msg = format!("{err:#}");
        assert!(
            msg.contains("max_step") && msg.contains("run.toml"),
            "{msg}"
        );
        std::fs::write(&path, "[training]\nmax_steps = 3\n[output]\ndir = \"x\"\n").expect("write");
        let (c, _) = load::<PretrainConfig>(&path, &["training.max_steps=7".into()]).expect("ok");
        assert_eq!(c.training.max_steps, 7);
        let err = load::<PretrainConfig>(&path, &["model.hiden_size=7".into()])
            .and_then(|(c, _)| c.model.bert_config(None))
            .expect_err("model typo");
        assert!(format!("{err:#}").contains("hiden_size"));
    }

    #[test]
    fn keys_of_the_other_run_kind_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pre.toml");
        std::fs::write(&path, "[training]\nepochs = 3\n[output]\ndir = \"x\"\n").expect("write");
        let msg = format!(
            "{:#}",
            load::<PretrainConfig>(&path, &[]).expect_err("epochs")
        );
        assert!(
            msg.contains("training.epochs")
                && msg.contains("pre.toml")
                && msg.contains("pretraining"),
            "{msg}"
        );
        let path = dir.path().join("fine.toml");
        let task =
            "[task]\nkind = \"sequence-classification\"\ntrain_file = \"t\"\nvalid_file = \"v\"\n";
        std::fs::write(&path, format!("{task}[output]\ndir = \"x\"\n")).expect("write");
        load::<FinetuneConfig>(&path, &[]).expect("a fine-tuning config");
        let msg = format!(
            "{:#}",
            load::<FinetuneConfig>(&path, &["training.eval_batches=3".into()])
                .expect_err("eval_batches")
        );
        assert!(
            msg.contains("training.eval_batches") && msg.contains("fine.toml"),
            "{msg}"
        );
    }

    #[test]
    fn every_shipped_config_parses() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
        let mut seen = 0;
        for entry in std::fs::read_dir(root.join("pretrain")).expect("configs/pretrain") {
            let path = entry.expect("entry").path();
            if path.extension().is_none_or(|e| e != "toml") {
                continue;
            }
            let (c, _) = load::<PretrainConfig>(&path, &[])
                .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
            if c.model.init_from.is_none() {
                c.model
                    .bert_config(None)
                    .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
            }
            assert!(!c.data.train_files.is_empty(), "{}", path.display());
            seen += 1;
        }
        assert!(
            seen >= 9,
            "tiny-cpu, the four BERT-base/large phases and their LAMB recipes"
        );
        let mut finetune = 0;
        for entry in std::fs::read_dir(root.join("finetune")).expect("configs/finetune") {
            let path = entry.expect("entry").path();
            if path.extension().is_none_or(|e| e != "toml") {
                continue;
            }
            let (c, _) = load::<FinetuneConfig>(&path, &[])
                .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
            assert!(c.model.init_from.is_some(), "{}", path.display());
            finetune += 1;
        }
        assert!(finetune >= 4, "rotten-tomatoes, sst2, mrpc, stsb");
    }
}
