//! `bert tokenizer train` and `bert data prepare`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use bert_data::BertTokenizer;
use bert_data::pretraining::{PrepareOptions, PretrainingDataConfig, prepare};

/// Options of `bert tokenizer train`.
#[derive(Debug, Clone, clap::Args)]
pub struct TrainTokenizerArgs {
    /// Text files to learn the vocabulary from.
    #[arg(long, num_args = 1.., required = true)]
    pub input: Vec<PathBuf>,
    /// Vocabulary size, specials included.
    #[arg(long, default_value_t = 30522)]
    pub vocab_size: usize,
    /// Output directory: tokenizer.json, vocab.txt, tokenizer_config.json.
    #[arg(long)]
    pub output: PathBuf,
    /// Keep case and accents (default: lowercase and strip accents, as bert-base-uncased).
    #[arg(long)]
    pub cased: bool,
    /// Minimum pair frequency for a merge.
    #[arg(long, default_value_t = 2)]
    pub min_frequency: u64,
}

/// `bert tokenizer train`.
pub fn train_tokenizer(args: &TrainTokenizerArgs) -> Result<()> {
    let start = Instant::now();
    let tokenizer = BertTokenizer::train(
        &args.input,
        args.vocab_size,
        args.cased,
        args.min_frequency,
        std::io::IsTerminal::is_terminal(&std::io::stderr()),
    )?;
    tokenizer.save(&args.output)?;
    eprintln!(
        "trained a {}-token WordPiece vocabulary in {:.1}s into {}",
        tokenizer.vocab_size(),
        start.elapsed().as_secs_f64(),
        args.output.display()
    );
    Ok(())
}

/// Where the corpus comes from: a config file's `[data]`, or flags.
#[derive(Debug, Clone, clap::Args)]
pub struct CorpusArgs {
    /// TOML config whose `[data]` section names the corpus (train_files, valid_files,
    /// tokenizer, prepared_dir); `model.init_from` is the tokenizer when `data.tokenizer` is unset.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Text files or globs (instead of data.train_files).
    #[arg(long, num_args = 1..)]
    pub input: Vec<String>,
    /// Held-out text files or globs (instead of data.valid_files).
    #[arg(long, num_args = 1..)]
    pub valid: Vec<String>,
    /// Model or tokenizer directory (instead of data.tokenizer).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Output directory of prepared shards (instead of data.prepared_dir).
    #[arg(long)]
    pub output: Option<PathBuf>,
}

/// The resolved corpus settings.
#[derive(Debug, Clone)]
pub struct Corpus {
    /// `[data]`.
    pub data: PretrainingDataConfig,
    /// Tokenizer directory.
    pub tokenizer_dir: PathBuf,
    /// Prepared output directory.
    pub prepared_dir: PathBuf,
}

/// Reads the `[data]` section (and `model.init_from`) of a TOML config.
pub fn data_section(path: &Path) -> Result<(PretrainingDataConfig, Option<PathBuf>)> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config {}", path.display()))?;
    let mut table: toml::Table =
        toml::from_str(&text).with_context(|| format!("{}: invalid TOML", path.display()))?;
    let data = match table.remove("data") {
        Some(toml::Value::Table(t)) => t
            .try_into::<PretrainingDataConfig>()
            .with_context(|| format!("{}: [data]", path.display()))?,
        Some(_) => bail!("{}: `data` must be a table", path.display()),
        None => PretrainingDataConfig::default(),
    };
    let init_from = table
        .get("model")
        .and_then(|m| m.get("init_from"))
        .and_then(|v| v.as_str())
        .map(PathBuf::from);
    Ok((data, init_from))
}

impl CorpusArgs {
    /// Flags over config over defaults.
    pub fn resolve(&self) -> Result<Corpus> {
        let (mut data, init_from) = match &self.config {
            Some(path) => data_section(path)?,
            None => (PretrainingDataConfig::default(), None),
        };
        if !self.input.is_empty() {
            data.train_files = self.input.clone();
        }
        if !self.valid.is_empty() {
            data.valid_files = self.valid.clone();
        }
        let tokenizer_dir = self
            .tokenizer
            .clone()
            .or_else(|| data.tokenizer.clone())
            .or(init_from)
            .context(
                "no tokenizer: pass --tokenizer DIR or set data.tokenizer (or model.init_from)",
            )?;
        let prepared_dir = self
            .output
            .clone()
            .or_else(|| data.prepared_dir.clone())
            .context("no output directory: pass --output DIR or set data.prepared_dir")?;
        if data.train_files.is_empty() {
            bail!("no training text: pass --input FILES or set data.train_files");
        }
        Ok(Corpus {
            data,
            tokenizer_dir,
            prepared_dir,
        })
    }
}

/// `bert data prepare`: `train/` (and `valid/`) shards under the prepared directory.
pub fn prepare_corpus(args: &CorpusArgs) -> Result<()> {
    let corpus = args.resolve()?;
    let tokenizer = BertTokenizer::from_dir(&corpus.tokenizer_dir).with_context(|| {
        format!(
            "cannot load the tokenizer of {}",
            corpus.tokenizer_dir.display()
        )
    })?;
    let progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
    for (split, files) in [
        ("train", &corpus.data.train_files),
        ("valid", &corpus.data.valid_files),
    ] {
        if files.is_empty() {
            continue;
        }
        let start = Instant::now();
        let out = corpus.prepared_dir.join(split);
        let report = prepare(
            &PrepareOptions {
                inputs: files.clone(),
                output: out.clone(),
                chunk_lines: corpus.data.chunk_lines,
                progress,
            },
            &tokenizer,
        )
        .with_context(|| format!("cannot prepare the {split} split"))?;
        let secs = start.elapsed().as_secs_f64();
        eprintln!(
            "{split}: {} shards written, {} unchanged; {} documents, {} tokens in {}; {:.1} MB/s",
            report.written,
            report.reused,
            report.documents,
            report.tokens,
            out.display(),
            report.bytes as f64 / 1e6 / secs.max(1e-9)
        );
    }
    Ok(())
}
