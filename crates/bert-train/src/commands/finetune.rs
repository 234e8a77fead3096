//! `bert finetune`, `bert evaluate` and `bert predict`.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use bert_data::{BertTokenizer, Truncation};
use bert_model::Architecture;
use bert_model::checkpoint::write_atomically;

use crate::backend::BackendKind;
use crate::config::{self, FinetuneConfig};
use crate::finetune::{self, PredictLine, PredictOptions, Setup, TaskKind};
use crate::trainer::RunDir;

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

impl PredictArgs {
    fn options(&self) -> PredictOptions {
        PredictOptions {
            input: self.input.clone(),
            batch_size: self.batch_size,
            top_k: self.top_k,
            n_best: self.n_best,
            max_answer_length: self.max_answer_length,
        }
    }
}

/// `bert finetune`.
pub fn run(args: &FinetuneArgs) -> Result<()> {
    let (config, _) = config::load::<FinetuneConfig>(&args.config, &args.set)?;
    let kind = BackendKind::resolve(config.training.backend.as_deref())?;
    // What every node shares: each has its own node rank.
    let mut shared = config.clone();
    shared.distributed.node_rank = 0;
    let config_toml = toml::to_string(&shared)?;
    // One process, or one rank of a multi-node run: every rank runs the same configuration,
    // rank 0 creates the run directory first.
    // (The trainer finds it as this thread's current cluster; MPI ends when it is dropped.)
    let cluster = crate::cluster::Cluster::init(&config.distributed)?;
    cluster.agree(
        "the configuration",
        crate::cluster::fingerprint(config_toml.as_bytes()),
    )?;
    // Before anything is loaded: an existing run is never overwritten without --resume.
    let run = cluster
        .rank_zero_first(|| RunDir::create(&config.output.dir, args.resume, &config_toml))?;
    let setup = Setup::new(config, Some(run))?;
    let trained = (|| -> Result<()> {
        crate::with_backend!(kind, |B, device| {
            type A = burn::backend::Autodiff<B>;
            // Before the data is read and tokenized. Replica 0 (the model, evaluation and
            // checkpoints) runs on the first listed device.
            let device =
                crate::trainer::devices::<A>(&device, &setup.config.training)?.swap_remove(0);
            finetune::train::<A>(&setup, &device)?
        });
        Ok(())
    })();
    cluster.or_abort(trained)
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
        && arch != task.architecture().name()
    {
        bail!(
            "{} is a {arch}, but task.kind {task:?} needs a {}",
            dir.display(),
            task.architecture()
        );
    }
    config.model.init_from = Some(dir.to_string_lossy().to_string());
    let setup = Setup::new(config, None)?;
    let metrics = crate::with_backend!(kind, |B, device| finetune::evaluate_dir::<B>(
        &setup, &dir, &device
    )?);
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

/// `bert predict`.
pub fn predict(args: &PredictArgs) -> Result<()> {
    let kind = BackendKind::resolve(args.backend.as_deref())?;
    let dir = crate::hub::resolve_model(&args.model)?;
    let config = bert_model::checkpoint::load_config(&dir)?;
    let arch = config.architectures.first().cloned().unwrap_or_default();
    let task = Architecture::from_name(&arch)
        .and_then(TaskKind::from_architecture)
        .with_context(|| {
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
        lines.push(PredictLine { line: i + 1, value });
    }
    let tokenizer =
        BertTokenizer::from_dir(&dir)?.with_model_limits(finetune::model_limits(&config));
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
    let options = args.options();
    let results: Vec<serde_json::Value> = crate::with_backend!(kind, |B, device| {
        finetune::predict::<B>(task, &dir, &tokenizer, &lines, &options, &device)?
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
