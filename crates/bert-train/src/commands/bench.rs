//! `bert bench train` (in `bench_train`) and `bert bench encode` (`bert bench data` is in
//! `bench_data`). The
//! JSON they print (last stdout line with `--json`) has the schema of scripts/bench_pytorch.py, so
//! scripts/bench.sh can put ours and transformers' side by side.
//!
//! - train (`bench_train`): the full pretraining step (forward with the MLM head on masked positions only,
//!   MLM + NSP loss, backward, global-norm clip + AdamW) of a pretraining config's model, batch
//!   and sequence length, on a synthetic batch: ids uniform over the vocabulary, `[CLS]` first,
//!   `[SEP]` in the middle and at the end, round(0.15·T) masked positions per row.
//! - encode: sentence embeddings as sentence-transformers computes them (length-sorted
//!   batches, dynamic padding, mean pooling, L2 normalisation), tokenization included.

pub use super::bench_train::{BenchTrainArgs, synthetic_batch, train, train_flops};

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use bert_data::{BertTokenizer, Truncation};
use bert_model::{BertModel, LoadOptions};
use burn::tensor::backend::Backend;
use burn::tensor::{Device, Tensor};

use crate::backend::BackendKind;

/// Options of `bert bench encode`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchEncodeArgs {
    /// Model directory or Hub id.
    #[arg(long)]
    pub model: PathBuf,
    /// Sentences per forward pass.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Longest input in tokens (longer sentences are cut).
    #[arg(long, default_value_t = 128)]
    pub seq_len: usize,
    /// A sentence per line.
    #[arg(long, default_value = "tests/fixtures/corpus/moby.txt")]
    pub input: PathBuf,
    /// Sentences encoded per timed run (the file's lines, repeated as needed).
    #[arg(long, default_value_t = 512)]
    pub sentences: usize,
    /// Timed runs (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// cpu, wgpu or cuda.
    #[arg(long)]
    pub backend: Option<String>,
    /// Run the CPU backend's generic tensor ops instead of the fused inference kernels
    /// (bert_model::kernels), to measure what the kernels bring.
    #[arg(long)]
    pub no_fused_kernels: bool,
    /// Print one JSON object (last line) after the table.
    #[arg(long)]
    pub json: bool,
}

/// Median, mean, min, max, p10 and p90 of durations in milliseconds.
pub(super) fn summary(ms: &[f64]) -> serde_json::Value {
    let mut v = ms.to_vec();
    v.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        if v.is_empty() {
            return f64::NAN;
        }
        let x = p * (v.len() - 1) as f64;
        let (lo, hi) = (x.floor() as usize, x.ceil() as usize);
        v[lo] + (v[hi] - v[lo]) * (x - lo as f64)
    };
    serde_json::json!({
        "median": pct(0.5),
        "mean": v.iter().sum::<f64>() / v.len().max(1) as f64,
        "min": v.first().copied().unwrap_or(f64::NAN),
        "max": v.last().copied().unwrap_or(f64::NAN),
        "p10": pct(0.1),
        "p90": pct(0.9),
    })
}

/// Peak resident set size of this process (MiB), from /proc (Linux).
pub(super) fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

pub(super) fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

pub(super) fn threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

pub(super) fn print_report(value: &serde_json::Value, json: bool) {
    if let Some(obj) = value.as_object() {
        for (k, v) in obj {
            let text = match v {
                serde_json::Value::Number(n) => n.as_f64().map_or(n.to_string(), |f| {
                    if f.fract() == 0.0 && f.abs() < 1e12 {
                        format!("{f}")
                    } else {
                        format!("{f:.4}")
                    }
                }),
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            println!("{k:>20}  {text}");
        }
    }
    if json {
        println!("{value}");
    }
}

/// The first `n` non-empty lines of `path` (cut to 400 characters), repeated as needed.
fn sentences(path: &Path, n: usize) -> Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let lines: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| l.chars().take(400).collect())
        .collect();
    if lines.is_empty() {
        bail!("{}: no sentences", path.display());
    }
    Ok(lines.iter().cycle().take(n).cloned().collect())
}

/// Mean-pooled, L2-normalised embeddings of `texts` (length-sorted batches).
fn embed<B: Backend>(
    model: &BertModel<B>,
    tokenizer: &BertTokenizer,
    texts: &[String],
    batch_size: usize,
    device: &Device<B>,
) -> Result<Vec<f32>> {
    let encodings: Vec<bert_data::Encoded> = texts
        .iter()
        .map(|t| tokenizer.encode(t, None))
        .collect::<Result<_, _>>()?;
    let mut order: Vec<usize> = (0..texts.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(encodings[i].len()));
    let mut out = Vec::new();
    for chunk in order.chunks(batch_size.max(1)) {
        let batch: Vec<bert_data::Encoded> = chunk.iter().map(|&i| encodings[i].clone()).collect();
        let padded =
            bert_data::pad_encodings(&batch, tokenizer.special_tokens().pad, Default::default());
        let input = bert_data::tensors::bert_input::<B>(&padded, device);
        let mask = input.attention_mask.clone().context("attention mask")?;
        let hidden = model.forward(input, false).last_hidden_state;
        let pooled = bert_model::masked_mean(hidden, mask);
        let norm = pooled
            .clone()
            .powi_scalar(2)
            .sum_dim(1)
            .sqrt()
            .clamp_min(1e-12);
        let e: Tensor<B, 2> = pooled / norm;
        out.extend(crate::finetune::host(e)?);
    }
    Ok(out)
}

fn bench_encode<B: Backend>(
    args: &BenchEncodeArgs,
    kind: BackendKind,
    device: &Device<B>,
) -> Result<serde_json::Value> {
    let dir = crate::hub::resolve_model(&args.model)?;
    let (model, _, _) =
        bert_model::load_pretrained::<B, BertModel<B>>(&dir, LoadOptions::strict(), device)?;
    let tokenizer =
        BertTokenizer::from_dir(&dir)?.with_truncation(args.seq_len, Truncation::LongestFirst)?;
    let texts = sentences(&args.input, args.sentences)?;
    // Warm-up: two batches.
    embed(
        &model,
        &tokenizer,
        &texts[..(2 * args.batch_size).min(texts.len())],
        args.batch_size,
        device,
    )?;
    let mut times = Vec::new();
    for _ in 0..args.repeats.max(1) {
        let start = Instant::now();
        embed(&model, &tokenizer, &texts, args.batch_size, device)?;
        B::sync(device).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    let stats = summary(&times);
    let median_s = stats["median"].as_f64().unwrap_or(f64::NAN) / 1e3;
    Ok(serde_json::json!({
        "workload": "encode",
        "framework": "burn",
        "backend": kind.to_string(),
        "device": if matches!(kind, BackendKind::Cpu | BackendKind::NdArray) { cpu_name() } else { format!("{device:?}") },
        "model": dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default(),
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "sentences": texts.len(),
        "threads": threads(),
        "fused_kernels": bert_model::kernels::enabled() && matches!(kind, BackendKind::Cpu),
        "time_ms": {"median": stats["median"], "min": stats["min"], "max": stats["max"]},
        "sentences_per_second": texts.len() as f64 / median_s,
        "peak_rss_mib": peak_rss_mib(),
    }))
}

/// `bert bench encode`.
pub fn encode(args: &BenchEncodeArgs) -> Result<()> {
    let kind = BackendKind::resolve(args.backend.as_deref())?;
    bert_model::ops::set_fused_kernels(!args.no_fused_kernels);
    let report = crate::with_backend!(kind, |B, device| bench_encode::<B>(args, kind, &device)?);
    print_report(&report, args.json);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_is_median_min_max() {
        let s = summary(&[3.0, 1.0, 2.0, 4.0]);
        assert_eq!(s["median"], 2.5);
        assert_eq!(s["min"], 1.0);
    }
}
