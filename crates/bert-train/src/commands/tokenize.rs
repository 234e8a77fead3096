//! `bert tokenize`: WordPiece tokens, ids, masks, word ids and offsets per JSONL line.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use bert_data::{BertTokenizer, Truncation};

use crate::input::{InputLine, read_jsonl};

/// Options of `bert tokenize`.
#[derive(Debug, Clone, clap::Args)]
pub struct TokenizeArgs {
    /// Model directory with tokenizer.json, or vocab.txt (+ tokenizer_config.json), or a Hub
    /// model id.
    #[arg(long)]
    pub model: PathBuf,
    /// JSONL input: {"text": ..., "text_pair": ...} per line.
    #[arg(long)]
    pub input: PathBuf,
    /// JSONL output, one object per input line.
    #[arg(long)]
    pub output: PathBuf,
    /// Truncate to this many tokens, specials included (longest-first).
    #[arg(long)]
    pub max_length: Option<usize>,
}

/// `bert tokenize`.
pub fn run(args: &TokenizeArgs) -> Result<()> {
    let model_dir = crate::hub::resolve_model(&args.model)?;
    let tokenizer = BertTokenizer::from_dir(&model_dir)?;
    let tokenizer = match args.max_length {
        Some(n) => tokenizer.with_truncation(n, Truncation::LongestFirst)?,
        None => tokenizer,
    };
    let lines = read_jsonl(&args.input)?;
    let mut out = Vec::new();
    for (number, line) in &lines {
        let InputLine::Text { text, text_pair } = line else {
            bail!(
                "{}:{number}: bert tokenize takes text lines ({{\"text\": ...}})",
                args.input.display()
            );
        };
        let e = tokenizer
            .encode(text, text_pair.as_deref())
            .with_context(|| format!("{}:{number}", args.input.display()))?;
        serde_json::to_writer(&mut out, &e)?;
        out.push(b'\n');
    }
    let tmp = args.output.with_extension("jsonl.tmp");
    let mut file =
        std::fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    file.write_all(&out)?;
    drop(file);
    std::fs::rename(&tmp, &args.output)
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    eprintln!(
        "tokenized {} lines into {}",
        lines.len(),
        args.output.display()
    );
    Ok(())
}
