//! `bert bench data`: corpus preparation and pretraining stream throughput.

use std::time::Instant;

use anyhow::{Result, bail};
use bert_data::BertTokenizer;
use bert_data::pretraining::{
    Documents, MaskVocab, PrepareOptions, PreparedCorpus, PretrainingStream, StreamPosition,
    prepare,
};

use super::corpus::CorpusArgs;

/// Options of `bert bench data`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchDataArgs {
    #[command(flatten)]
    corpus: CorpusArgs,
    /// Sequences per batch.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Seconds spent streaming batches.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// `bert bench data`: prepare throughput (MB/s of text) and pretraining stream throughput.
pub fn bench_data(args: &BenchDataArgs) -> Result<()> {
    let mut corpus_args = args.corpus.clone();
    let scratch = tempfile::tempdir()?;
    if corpus_args.output.is_none() && corpus_args.config.is_none() {
        corpus_args.output = Some(scratch.path().to_path_buf());
    }
    let mut corpus = corpus_args.resolve()?;
    // Always prepare from scratch so the figure is a real tokenization throughput.
    corpus.prepared_dir = scratch.path().join("prepared");
    let tokenizer = BertTokenizer::from_dir(&corpus.tokenizer_dir)?;
    let start = Instant::now();
    let report = prepare(
        &PrepareOptions {
            inputs: corpus.data.train_files.clone(),
            output: corpus.prepared_dir.clone(),
            chunk_lines: corpus.data.chunk_lines,
            progress: false,
        },
        &tokenizer,
    )?;
    let prepare_secs = start.elapsed().as_secs_f64();
    let docs = PreparedCorpus::open(&corpus.prepared_dir, Some(&tokenizer))?;
    let special = tokenizer.special_tokens().clone();
    let mut stream = PretrainingStream::new(
        &docs,
        MaskVocab::from_tokenizer(&tokenizer)?,
        special.cls,
        special.sep,
        special.pad,
        corpus.data.stream_config(0),
        StreamPosition::default(),
    );
    let start = Instant::now();
    let (mut batches, mut tokens) = (0usize, 0usize);
    while start.elapsed().as_secs_f64() < args.seconds {
        let Some(batch) = stream.next_batch(args.batch_size) else {
            bail!("the corpus yields no training sequence");
        };
        batches += 1;
        tokens += batch.num_tokens();
    }
    let stream_secs = start.elapsed().as_secs_f64();
    let result = serde_json::json!({
        "prepare_mb_per_s": report.bytes as f64 / 1e6 / prepare_secs,
        "prepare_threads": rayon::current_num_threads(),
        "prepared_tokens": report.tokens,
        "prepared_documents": docs.num_documents(),
        "stream_batches_per_s": batches as f64 / stream_secs,
        "stream_tokens_per_s_one_core": tokens as f64 / stream_secs,
        "batch_size": args.batch_size,
        "max_seq_length": corpus.data.max_seq_length,
        "masking": corpus.data.masking,
    });
    if args.json {
        println!("{result}");
    } else {
        println!(
            "prepare: {:.2} MB/s of text on {} threads ({} tokens, {} documents)",
            result["prepare_mb_per_s"].as_f64().unwrap_or(0.0),
            rayon::current_num_threads(),
            report.tokens,
            docs.num_documents()
        );
        println!(
            "stream:  {:.1} batches/s of {}, {:.0} tokens/s on one core",
            result["stream_batches_per_s"].as_f64().unwrap_or(0.0),
            args.batch_size,
            result["stream_tokens_per_s_one_core"]
                .as_f64()
                .unwrap_or(0.0)
        );
    }
    Ok(())
}
