//! `bert`: pretrain, fine-tune, evaluate and run BERT models (and encode, tokenize, convert,
//! download, benchmark). Parses the command line and dispatches to `bert_train::commands`.

use std::process::ExitCode;

use bert_train::commands::{
    bench, bench_data, convert, corpus, download, encode, fill_mask, finetune, launch, pretrain,
    serve, tokenize,
};
use clap::{Parser, Subcommand};

/// mimalloc instead of the system allocator: a training step allocates and frees tensors of
/// up to ~100 MB, which glibc hands to mmap/munmap every time (page faults and zeroing).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// BERT for Rust: Hugging Face compatible BERT on Burn (CPU, wgpu, CUDA).
#[derive(Debug, Parser)]
#[command(name = "bert", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a model over a JSONL file and store hidden states, pooled outputs and head logits
    /// in a safetensors file.
    Encode(encode::EncodeArgs),
    /// Tokenize a JSONL file: tokens, ids, masks, word ids and offsets per line.
    Tokenize(tokenize::TokenizeArgs),
    /// Load a Hugging Face model directory and write it back in HF layout with safetensors
    /// weights and tokenizer files.
    Convert(convert::ConvertArgs),
    /// Pretrain BERT (MLM + NSP, or MLM only) from a TOML config; `--resume` continues a run.
    Pretrain(pretrain::PretrainArgs),
    /// Fine-tune an HF model on a task (sequence classification or regression, token
    /// classification, question answering, multiple choice) from a TOML config.
    Finetune(finetune::FinetuneArgs),
    /// Dev metrics of a fine-tuned model on a config's `task.valid_file`, printed and written
    /// as JSON.
    Evaluate(finetune::EvaluateArgs),
    /// Run a fine-tuned model over a JSONL file: labels with scores, entities with character
    /// spans, answers with text and score, or the chosen choice.
    Predict(finetune::PredictArgs),
    /// The most likely tokens for each `[MASK]` of a text.
    FillMask(fill_mask::FillMaskArgs),
    /// Serve a model over HTTP with dynamic batching (text-embeddings-inference's routes:
    /// /embed, /v1/embeddings, /predict, /rerank, /tokenize, /health, /info, /metrics).
    Serve(serve::ServeArgs),
    /// Download a model from the Hugging Face Hub into the shared cache (or copy it to --to).
    Download(download::DownloadArgs),
    /// List the backends compiled into this binary and the default one.
    Backends,
    /// Start N processes of a bert command on this machine through MPI (mpirun), one rank
    /// each.
    Launch(launch::LaunchArgs),
    /// Check that the processes of a launch reach each other: all-reduce rounds and a
    /// configuration agreement (`bert launch --nodes 2 -- cluster-check`).
    ClusterCheck(launch::ClusterCheckArgs),
    /// Tokenizer tools.
    Tokenizer {
        #[command(subcommand)]
        command: TokenizerCommand,
    },
    /// Pretraining corpus tools.
    Data {
        #[command(subcommand)]
        command: DataCommand,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
}

#[derive(Debug, Subcommand)]
enum TokenizerCommand {
    /// Train a WordPiece vocabulary from text files.
    Train(corpus::TrainTokenizerArgs),
}

#[derive(Debug, Subcommand)]
enum DataCommand {
    /// Tokenize a corpus once into memory-mapped shards (incremental, all cores).
    Prepare(corpus::CorpusArgs),
    /// Write the exact training and eval batches of a pretraining config to a safetensors
    /// file (for a reference run in PyTorch: scripts/pretrain_pytorch.py).
    Dump(pretrain::DumpArgs),
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Corpus preparation (MB/s) and pretraining stream (batches/s, tokens/s) throughput.
    Data(bench_data::BenchDataArgs),
    /// Training-step time of a pretraining config's model on a synthetic batch (forward, loss,
    /// backward, optimizer): median and spread, tokens/s, peak memory.
    Train(bench::BenchTrainArgs),
    /// Sentence-embedding throughput (sentences/s) of a model, tokenization included.
    Encode(bench::BenchEncodeArgs),
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Encode(args) => encode::run(&args),
        Command::Tokenize(args) => tokenize::run(&args),
        Command::Convert(args) => convert::convert(&args),
        Command::Pretrain(args) => pretrain::run(&args),
        Command::Finetune(args) => finetune::run(&args),
        Command::Evaluate(args) => finetune::evaluate(&args),
        Command::Predict(args) => finetune::predict(&args),
        Command::FillMask(args) => fill_mask::run(&args),
        Command::Serve(args) => serve::run(&args),
        Command::Download(args) => download::download(&args),
        Command::Backends => bert_train::commands::backends(),
        Command::Launch(args) => launch::run(&args),
        Command::ClusterCheck(args) => launch::cluster_check(&args),
        Command::Tokenizer { command } => match command {
            TokenizerCommand::Train(args) => corpus::train_tokenizer(&args),
        },
        Command::Data { command } => match command {
            DataCommand::Prepare(args) => corpus::prepare_corpus(&args),
            DataCommand::Dump(args) => pretrain::dump(&args),
        },
        Command::Bench { command } => match command {
            BenchCommand::Data(args) => bench_data::bench_data(&args),
            BenchCommand::Train(args) => bench::train(&args),
            BenchCommand::Encode(args) => bench::encode(&args),
        },
    }
}

/// mimalloc's `purge_delay` option (`mi_option_purge_delay` in mimalloc.h, v2 and v3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keeps freed memory mapped instead of returning it to the OS after mimalloc's default delay:
/// a training step frees and re-allocates the same large buffers, and every re-fault costs a
/// kernel page clear (BENCHMARKS.md has the measurement). The environment variable
/// `MIMALLOC_PURGE_DELAY` still overrides it.
fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets a documented mimalloc option (an integer in mimalloc's option table);
        // no pointer is passed and the allocator reads the option atomically.
        #[allow(unsafe_code)]
        unsafe {
            libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1)
        };
    }
}

fn main() -> ExitCode {
    keep_freed_memory();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line: the whole cause chain, outermost first.
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
