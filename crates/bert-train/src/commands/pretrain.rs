//! `bert pretrain` and `bert data dump`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use bert_data::pretraining::{PretrainingBatch, PretrainingStream, StreamPosition};
use bert_model::checkpoint::write_atomically;
use burn::tensor::TensorData;

use crate::backend::BackendKind;
use crate::config::{self, PretrainConfig};
use crate::pretraining::{PretrainData, eval_stream};

/// Options of `bert pretrain`.
#[derive(Debug, Clone, clap::Args)]
pub struct PretrainArgs {
    /// Run config (TOML).
    #[arg(long)]
    pub config: PathBuf,
    /// Override a config value: `--set training.max_steps=200` (TOML value or bare string).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Continue the run in output.dir from its latest checkpoint.
    #[arg(long)]
    pub resume: bool,
}

/// `bert pretrain`.
pub fn run(args: &PretrainArgs) -> Result<()> {
    let (config, _) = config::load::<PretrainConfig>(&args.config, &args.set)?;
    let kind = BackendKind::resolve(config.training.backend.as_deref())?;
    crate::with_backend!(kind, |B, device| crate::pretraining::train::<
        burn::backend::Autodiff<B>,
    >(&config, args.resume, &device)?);
    Ok(())
}

/// Options of `bert data dump`.
#[derive(Debug, Clone, clap::Args)]
pub struct DumpArgs {
    /// Pretraining config (TOML).
    #[arg(long)]
    pub config: PathBuf,
    /// Override a config value.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Output safetensors file.
    #[arg(long)]
    pub output: PathBuf,
}

/// Stacks batches padded to `seq` into `[n, batch, seq]` / `[n, batch]` int32 tensors.
fn stack(
    prefix: &str,
    batches: &[PretrainingBatch],
    seq: usize,
    pad: u32,
) -> Vec<(String, TensorData)> {
    let rows = batches.first().map_or(0, |b| b.input_ids.len());
    let n = batches.len();
    let field = |name: &str, fill: i64, get: &dyn Fn(&PretrainingBatch) -> &Vec<Vec<i64>>| {
        let mut v: Vec<i32> = Vec::with_capacity(n * rows * seq);
        for b in batches {
            for r in get(b) {
                v.extend(r.iter().map(|&x| x as i32));
                v.extend(std::iter::repeat_n(fill as i32, seq - r.len()));
            }
        }
        (
            format!("{prefix}.{name}"),
            TensorData::new(v, [n, rows, seq]),
        )
    };
    let nsp: Vec<i32> = batches
        .iter()
        .flat_map(|b| b.next_sentence_labels.iter().map(|&x| x as i32))
        .collect();
    vec![
        field("input_ids", i64::from(pad), &|b| &b.input_ids),
        field("token_type_ids", 0, &|b| &b.token_type_ids),
        field("attention_mask", 0, &|b| &b.attention_mask),
        field("mlm_labels", -100, &|b| &b.mlm_labels),
        (
            format!("{prefix}.next_sentence_labels"),
            TensorData::new(nsp, [n, rows]),
        ),
    ]
}

/// `bert data dump`: the exact batches a `bert pretrain` run with this config trains on (one
/// per micro-batch, in order) and evaluates on, for a reference run in another framework
/// (scripts/pretrain_pytorch.py).
pub fn dump(args: &DumpArgs) -> Result<()> {
    let (config, _) = config::load::<PretrainConfig>(&args.config, &args.set)?;
    let data = PretrainData::open(&config)?;
    let seq = config.data.max_seq_length;
    let pad = data.special.pad;
    let batch_size = config.training.batch_size;
    let mut stream = PretrainingStream::new(
        &data.train_corpus,
        data.vocab.clone(),
        data.special.cls,
        data.special.sep,
        pad,
        config.data.stream_config(config.training.seed),
        StreamPosition::default(),
    );
    let steps =
        config.training.max_steps as usize * config.training.gradient_accumulation_steps.max(1);
    let mut train = Vec::with_capacity(steps);
    for _ in 0..steps {
        train.push(
            stream
                .next_batch(batch_size)
                .context("the corpus yields no sequence")?,
        );
    }
    let mut tensors = stack("train", &train, seq, pad);
    if let Some(valid) = &data.valid_corpus {
        let mut stream = eval_stream(valid, &data.vocab, &data.special, &config);
        let eval: Vec<PretrainingBatch> = (0..config.training.eval_batches.max(1))
            .map_while(|_| stream.next_batch(batch_size))
            .collect();
        tensors.extend(stack("eval", &eval, seq, pad));
    }
    let views = tensors
        .iter()
        .map(|(name, d)| {
            safetensors::tensor::TensorView::new(
                safetensors::Dtype::I32,
                d.shape.to_vec(),
                d.as_bytes(),
            )
            .map(|v| (name.clone(), v))
            .map_err(|e| anyhow::anyhow!("{name}: {e}"))
        })
        .collect::<Result<Vec<_>>>()?;
    let metadata = std::collections::HashMap::from([
        (
            "vocab_size".to_string(),
            data.tokenizer.vocab_size().to_string(),
        ),
        ("config".to_string(), toml::to_string(&config)?),
        ("bert_config".to_string(), data.bert_config.to_json_string()),
    ]);
    let bytes = safetensors::serialize(views, Some(metadata))?;
    write_atomically(&args.output, &bytes)?;
    eprintln!(
        "{} training and {} eval batches of {batch_size}×{seq} written to {}",
        train.len(),
        config.training.eval_batches,
        args.output.display()
    );
    Ok(())
}
