//! `bert bench train` and `bert bench encode` (`bert bench data` is in `bench_data`). The
//! JSON they print (last stdout line with `--json`) has the schema of scripts/bench_pytorch.py, so
//! scripts/bench.sh can put ours and transformers' side by side.
//!
//! - train: the full pretraining step (forward with the MLM head on masked positions only,
//!   MLM + NSP loss, backward, global-norm clip + AdamW) of a pretraining config's model, batch
//!   and sequence length, on a synthetic batch: ids uniform over the vocabulary, `[CLS]` first,
//!   `[SEP]` in the middle and at the end, round(0.15·T) masked positions per row.
//! - encode: sentence embeddings as sentence-transformers computes them (length-sorted
//!   batches, dynamic padding, mean pooling, L2 normalisation), tokenization included.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use bert_data::pretraining::PretrainingBatch;
use bert_data::{BertTokenizer, Truncation};
use bert_model::{BertForPreTraining, BertModel, LoadOptions};
use burn::module::{AutodiffModule, Module};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Device, Tensor};
use rand::{Rng, SeedableRng};

use crate::backend::BackendKind;
use crate::config::{self, Precision, PretrainConfig};
use crate::pretraining::PretrainingObjective;
use crate::trainer::{AdamW, ddp};

/// Options of `bert bench train`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchTrainArgs {
    /// A pretraining config (model, batch size, data.max_seq_length, optimizer).
    #[arg(long)]
    pub config: PathBuf,
    /// Override a config value.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Timed steps.
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// cpu, wgpu or cuda (default: training.backend, else the best compiled in).
    #[arg(long)]
    pub backend: Option<String>,
    /// f32, or bf16/f16 mixed precision (as `training.precision`; default: the config's).
    #[arg(long, value_enum)]
    pub precision: Option<Precision>,
    /// Dropout off and the initial weights drawn on the CPU, so that backends can be compared
    /// by `final_loss`.
    #[arg(long)]
    pub fixed_batch: bool,
    /// Data parallelism over these devices, e.g. `0,1` (as `training.devices`: one replica
    /// each, the batch size per device; default: the config's).
    #[arg(long, value_delimiter = ',')]
    pub devices: Option<Vec<usize>>,
    /// Run Burn's generic ops instead of the fused training ops on the CPU (softmax, GELU and
    /// cross-entropy with their own backward, parallel dropout masks: bert_model::kernels),
    /// to measure what they bring.
    #[arg(long)]
    pub no_fused_kernels: bool,
    /// Print one JSON object (last line) after the table.
    #[arg(long)]
    pub json: bool,
}

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

/// The mean loss of a step's merged statistics (a host read).
fn read_loss<B: Backend>(
    tally: ddp::Tally<B, crate::pretraining::PretrainingStats>,
    micro_batches: usize,
) -> Result<f64> {
    let Some(sums) = tally.sums else {
        return Ok(f64::NAN);
    };
    let sums = sums
        .into_data()
        .convert::<f64>()
        .to_vec::<f64>()
        .map_err(|e| anyhow::anyhow!("cannot read the loss: {e:?}"))?;
    Ok(crate::trainer::Stats::loss(
        &tally.stats,
        &sums,
        micro_batches,
    ))
}

/// Median, mean, min, max, p10 and p90 of durations in milliseconds.
fn summary(ms: &[f64]) -> serde_json::Value {
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
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn cpu_name() -> String {
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

fn threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Ids below this are special tokens in a small vocabulary's synthetic batch.
const SPECIAL_IDS: usize = 5;

/// The synthetic pretraining batch (seeded): see the module docs.
pub fn synthetic_batch(
    batch: usize,
    seq: usize,
    vocab: usize,
    nsp: bool,
    seed: u64,
) -> PretrainingBatch {
    let (cls, sep, mask, first) = if vocab > 1000 {
        (101, 102, 103, 999)
    } else {
        (2, 3, 4, SPECIAL_IDS as i64)
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mid = seq / 2;
    let masked = ((0.15 * seq as f64).round() as usize).min(seq.saturating_sub(3));
    let mut out = PretrainingBatch {
        seq_len: seq,
        ..Default::default()
    };
    for _ in 0..batch {
        let mut ids: Vec<i64> = (0..seq)
            .map(|_| rng.random_range(first..vocab as i64))
            .collect();
        ids[0] = cls;
        ids[mid] = sep;
        ids[seq - 1] = sep;
        let mut candidates: Vec<usize> = (1..seq - 1).filter(|&i| i != mid).collect();
        let mut labels = vec![-100i64; seq];
        for k in 0..masked {
            let j = rng.random_range(k..candidates.len());
            candidates.swap(k, j);
            let p = candidates[k];
            labels[p] = ids[p];
            ids[p] = mask;
        }
        out.input_ids.push(ids);
        out.token_type_ids
            .push((0..seq).map(|i| i64::from(i > mid)).collect());
        out.attention_mask.push(vec![1; seq]);
        out.mlm_labels.push(labels);
        out.next_sentence_labels
            .push(if nsp { rng.random_range(0..2) } else { -1 });
    }
    out
}

fn bench_train<B: AutodiffBackend>(
    args: &BenchTrainArgs,
    config: &PretrainConfig,
    kind: BackendKind,
    device: &Device<B>,
) -> Result<serde_json::Value> {
    let mut bert_config = config.model.bert_config(None)?;
    if args.fixed_batch {
        bert_config.hidden_dropout_prob = 0.0;
        bert_config.attention_probs_dropout_prob = 0.0;
    }
    let seq = config.data.max_seq_length;
    let batch_size = config.training.batch_size;
    if seq > bert_config.max_position_embeddings {
        bail!(
            "data.max_seq_length {seq} exceeds max_position_embeddings {}",
            bert_config.max_position_embeddings
        );
    }
    if seq < 3 {
        bail!(
            "data.max_seq_length {seq}: a benchmark batch needs at least 3 tokens ([CLS] … [SEP] … [SEP])"
        );
    }
    if bert_config.vocab_size <= SPECIAL_IDS {
        bail!(
            "model.vocab_size {}: a benchmark batch needs more than {SPECIAL_IDS} ids (the special tokens come first)",
            bert_config.vocab_size
        );
    }
    let seed = config.training.seed;
    let precision = args.precision.unwrap_or(config.training.precision);
    let devices = ddp::devices::<B>(
        device,
        args.devices.as_deref().unwrap_or(&config.training.devices),
    )?;
    let device = &devices[0];
    precision.check::<B>(device)?;
    let model: BertForPreTraining<B> = if args.fixed_batch {
        // The same initial weights on every backend: drawn on the CPU, moved over.
        let scratch = tempfile::tempdir()?;
        #[cfg(any(feature = "flex", feature = "ndarray"))]
        {
            use crate::backend::HostBackend;
            let cpu = Default::default();
            <HostBackend as Backend>::seed(&cpu, seed);
            let host = BertForPreTraining::<HostBackend>::new(&bert_config, &cpu);
            bert_model::save_pretrained(&host, &bert_config, scratch.path())?;
        }
        #[cfg(not(any(feature = "flex", feature = "ndarray")))]
        bail!("--fixed-batch draws the initial weights on the CPU: build with the `flex` feature");
        let (m, _, _) = bert_model::load_pretrained::<B, BertForPreTraining<B>>(
            scratch.path(),
            LoadOptions::strict(),
            device,
        )?;
        m
    } else {
        B::seed(device, seed);
        BertForPreTraining::new(&bert_config, device)
    };
    // Replica r's micro-batch k of every step: the synthetic batch of seed + r·A + k (A
    // micro-batches per replica), so replicas see different data, as in training.
    let accumulation = config.training.gradient_accumulation_steps.max(1);
    let share = |rank: usize| ddp::Share {
        batches: (0..accumulation)
            .map(|k| {
                synthetic_batch(
                    batch_size,
                    seq,
                    bert_config.vocab_size,
                    config.data.next_sentence_prediction,
                    seed + (rank * accumulation + k) as u64,
                )
            })
            .collect(),
        idle: None,
    };
    let mut opt = AdamW::<B>::new(config.optimizer.clone());
    let mut times = Vec::new();
    let mut last_loss = f64::NAN;
    let mut first_loss = f64::NAN;
    let lr = config.optimizer.learning_rate;
    // One replica per device (see crate::trainer::ddp).
    let work = ddp::Step {
        objective: &PretrainingObjective,
        precision,
    };
    let n = devices.len();
    let model = std::thread::scope(|scope| -> Result<BertForPreTraining<B>> {
        let replicas = ddp::Replicas::start(
            scope,
            &devices,
            &work,
            &model,
            &opt,
            &config.optimizer,
            seed,
        )?;
        let mut model = model;
        // Drawn once: the timed steps clone them, as they cloned one batch before.
        let shares: Vec<_> = (0..n).map(share).collect();
        for i in 0..args.warmup + args.steps {
            let start = Instant::now();
            let shares = shares.clone();
            let micro_batches = n * accumulation;
            let (next, replica_stats, _) = replicas.step(
                &work,
                model,
                &mut opt,
                shares,
                micro_batches,
                i as u64,
                lr,
                device,
            )?;
            model = next;
            let mut tally = ddp::Tally::default();
            for s in replica_stats {
                tally.merge(s, device);
            }
            // The loss is read on the first and the last step only, as the trainer reads it
            // once per logging window; the others just wait for the devices.
            let last = i + 1 == args.warmup + args.steps;
            if i == 0 || last {
                let loss = read_loss(tally, micro_batches)?;
                if i == 0 {
                    first_loss = loss;
                }
                last_loss = loss;
            }
            for d in &devices {
                B::sync(d).map_err(|e| anyhow::anyhow!("{e:?}"))?;
            }
            let elapsed = start.elapsed().as_secs_f64() * 1e3;
            if i >= args.warmup {
                times.push(elapsed);
            }
        }
        Ok(model)
    })?;
    let stats = summary(&times);
    let median_s = stats["median"].as_f64().unwrap_or(f64::NAN) / 1e3;
    Ok(serde_json::json!({
        "workload": "train",
        "framework": "burn",
        "backend": kind.to_string(),
        "device": if matches!(kind, BackendKind::Cpu | BackendKind::NdArray) { cpu_name() } else { format!("{device:?}") },
        "model": config.model.fields.get("preset").and_then(|v| v.as_str()).unwrap_or("custom"),
        "layers": bert_config.num_hidden_layers,
        "hidden": bert_config.hidden_size,
        "batch_size": batch_size,
        "devices": n,
        "seq_len": seq,
        "precision": precision.to_string(),
        "attention": "burn",
        "threads": threads(),
        "steps": args.steps,
        "warmup": args.warmup,
        "step_time_ms": stats,
        "gradient_accumulation_steps": accumulation,
        "tokens_per_second": (n * accumulation * batch_size * seq) as f64 / median_s,
        "samples_per_second": (n * accumulation * batch_size) as f64 / median_s,
        "peak_rss_mib": peak_rss_mib(),
        "peak_device_mib": serde_json::Value::Null,
        "first_loss": first_loss,
        "final_loss": last_loss,
        "parameters": model.valid().num_params(),
    }))
}

fn print_report(value: &serde_json::Value, json: bool) {
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

/// `bert bench train`.
pub fn train(args: &BenchTrainArgs) -> Result<()> {
    let (config, _) = config::load::<PretrainConfig>(&args.config, &args.set)?;
    let kind = BackendKind::resolve(
        args.backend
            .as_deref()
            .or(config.training.backend.as_deref()),
    )?;
    bert_model::ops::set_fused_kernels(!args.no_fused_kernels);
    let report = crate::with_backend!(kind, |B, device| bench_train::<burn::backend::Autodiff<B>>(
        args, &config, kind, &device
    )?);
    print_report(&report, args.json);
    Ok(())
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
    fn synthetic_batches_mask_fifteen_percent_off_the_specials() {
        let b = synthetic_batch(4, 128, 30522, true, 1);
        for (ids, labels) in b.input_ids.iter().zip(&b.mlm_labels) {
            assert_eq!((ids[0], ids[64], ids[127]), (101, 102, 102));
            let masked: Vec<usize> = (0..128).filter(|&i| labels[i] >= 0).collect();
            assert_eq!(masked.len(), 19);
            assert!(
                masked
                    .iter()
                    .all(|&i| ids[i] == 103 && ![0, 64, 127].contains(&i))
            );
        }
        assert_eq!(b, synthetic_batch(4, 128, 30522, true, 1), "seeded");
        let s = summary(&[3.0, 1.0, 2.0, 4.0]);
        assert_eq!(s["median"], 2.5);
        assert_eq!(s["min"], 1.0);
    }
}
