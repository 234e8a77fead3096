//! `bert`: pretrain, fine-tune, evaluate and run BERT models (and encode, tokenize, convert,
//! download, benchmark).

mod backend;
mod bench;
mod config;
mod data;
mod ddp;
mod encode;
mod fill_mask;
mod finetune;
mod hub;
mod input;
mod metrics;
mod optim;
mod plot;
mod pretrain;
mod progress;
mod rundir;
mod tokenize;

use std::process::ExitCode;

/// mimalloc instead of the system allocator: a training step allocates and frees tensors of
/// up to ~100 MB, which glibc hands to mmap/munmap every time (page faults and zeroing: 38 %
/// of a MiniLM-sized CPU step, measured with `bert bench train`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};

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
    Convert(encode::ConvertArgs),
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
    /// The most likely tokens for each [MASK] of a text.
    FillMask(fill_mask::FillMaskArgs),
    /// Download a model from the Hugging Face Hub into the shared cache (or copy it to --to).
    Download(hub::DownloadArgs),
    /// List the backends compiled into this binary and the default one.
    Backends,
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
    Train(data::TrainTokenizerArgs),
}

#[derive(Debug, Subcommand)]
enum DataCommand {
    /// Tokenize a corpus once into memory-mapped shards (incremental, all cores).
    Prepare(data::CorpusArgs),
    /// Write the exact training and eval batches of a pretraining config to a safetensors
    /// file (for a reference run in PyTorch: scripts/pretrain_pytorch.py).
    Dump(pretrain::DumpArgs),
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Corpus preparation (MB/s) and pretraining stream (batches/s, tokens/s) throughput.
    Data(data::BenchDataArgs),
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
        Command::Convert(args) => encode::convert(&args),
        Command::Tokenizer {
            command: TokenizerCommand::Train(args),
        } => data::train_tokenizer(&args),
        Command::Data {
            command: DataCommand::Prepare(args),
        } => data::prepare_corpus(&args),
        Command::Data {
            command: DataCommand::Dump(args),
        } => pretrain::dump(&args),
        Command::Bench {
            command: BenchCommand::Data(args),
        } => data::bench_data(&args),
        Command::Bench {
            command: BenchCommand::Train(args),
        } => bench::train(&args),
        Command::Bench {
            command: BenchCommand::Encode(args),
        } => bench::encode(&args),
        Command::Download(args) => hub::download(&args),
        Command::FillMask(args) => fill_mask::run(&args),
        Command::Pretrain(args) => pretrain::run(&args),
        Command::Finetune(args) => finetune::run(&args),
        Command::Evaluate(args) => finetune::evaluate(&args),
        Command::Predict(args) => finetune::predict(&args),
        Command::Backends => {
            for kind in backend::BackendKind::all_compiled() {
                println!("{kind}");
            }
            println!("default: {}", backend::BackendKind::resolve(None)?);
            Ok(())
        }
    }
}

/// mimalloc's `purge_delay` option (`mi_option_purge_delay` in mimalloc.h, v2 and v3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keeps freed memory mapped instead of returning it to the OS after mimalloc's default delay:
/// a training step frees and re-allocates the same large buffers, and every re-fault costs a
/// kernel page clear (13 % of a bert-mini CPU step). Measured with `bert bench train --config
/// configs/bench/bert-mini.toml` (3 alternating pairs): +14 % tokens/s, +4.5 % peak RSS. The
/// environment variable `MIMALLOC_PURGE_DELAY` still overrides it.
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
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line: the whole cause chain, outermost first.
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
