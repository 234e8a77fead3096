//! `bert bench train`: the full pretraining step of a pretraining config's model, batch and
//! sequence length on a synthetic batch (see `bench`), its tokens/s, device memory and model
//! FLOPs utilisation.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Result, bail};
use bert_data::pretraining::PretrainingBatch;
use bert_model::{BertConfig, BertForPreTraining, LoadOptions};
use burn::module::{AutodiffModule, Module};
use burn::tensor::Device;
use burn::tensor::backend::{AutodiffBackend, Backend};
use rand::{Rng, SeedableRng};

use crate::backend::BackendKind;
use crate::config::{self, Precision, PretrainConfig};
use crate::pretraining::PretrainingObjective;
use crate::trainer::{AdamW, ddp};

use super::bench::{cpu_name, peak_rss_mib, print_report, summary, threads};

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
    /// Run Burn's generic ops instead of the fused training ops (on the CPU softmax, GELU,
    /// LayerNorm and cross-entropy with their own backward and parallel dropout masks:
    /// bert_model::kernels; on wgpu and CUDA the CubeCL kernels: attention, LayerNorm, bias +
    /// GELU, cross-entropy, AdamW), to measure what they bring.
    #[arg(long)]
    pub no_fused_kernels: bool,
    /// The device's peak throughput in TFLOP/s for the precision run (dense matrix products:
    /// e.g. 989 for an H100 SXM in bf16), to report the model FLOPs utilisation (MFU);
    /// `scripts/bench_gpu.sh` takes it from a table of known GPUs.
    #[arg(long)]
    pub peak_tflops: Option<f64>,
    /// Print one JSON object (last line) after the table.
    #[arg(long)]
    pub json: bool,
}

/// Matrix-product FLOPs of one pretraining step (forward and backward: three times the
/// forward), the formula `scripts/bench_pytorch.py` uses too: per token and layer
/// `2·(4H² + 2HI)` for the projections and the feed-forward plus `4TH` for the attention scores
/// and context; `2·(H² + HV)` per position the MLM head predicts (`predicted`: the masked ones
/// for ours); `2·(H² + 2H)` per sequence for the pooler and NSP head.
pub fn train_flops(
    config: &BertConfig,
    batch: usize,
    seq: usize,
    predicted: usize,
    nsp: bool,
) -> f64 {
    let (h, i, v) = (
        config.hidden_size as f64,
        config.intermediate_size as f64,
        config.vocab_size as f64,
    );
    let (b, t, l) = (batch as f64, seq as f64, config.num_hidden_layers as f64);
    let encoder = b * t * l * (2.0 * (4.0 * h * h + 2.0 * h * i) + 4.0 * t * h);
    let mlm = predicted as f64 * 2.0 * (h * h + h * v);
    let pooler = if nsp {
        b * 2.0 * (h * h + 2.0 * h)
    } else {
        0.0
    };
    3.0 * (encoder + mlm + pooler)
}

/// Masked positions per row of a synthetic batch (15 %, at most the non-special positions).
fn masked_per_row(seq: usize) -> usize {
    ((0.15 * seq as f64).round() as usize).min(seq.saturating_sub(3))
}

/// The mean loss of a step's merged statistics (a host read).
fn read_loss<B: Backend>(
    tally: ddp::Tally<B, crate::pretraining::PretrainingStats>,
    micro_batches: usize,
) -> Result<f64> {
    let Some(sums) = tally.sums else {
        return Ok(f64::NAN);
    };
    let sums = crate::trainer::read_sums(sums, "loss")?;
    Ok(crate::trainer::Stats::loss(
        &tally.stats,
        &sums,
        micro_batches,
    ))
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
    let masked = masked_per_row(seq);
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
    // micro-batches per replica), so replicas see different data, as in training; its dropout
    // masks are the same at every step.
    let accumulation = config.training.gradient_accumulation_steps.max(1);
    let n = devices.len();
    let batches = (0..n * accumulation)
        .map(|m| {
            synthetic_batch(
                batch_size,
                seq,
                bert_config.vocab_size,
                config.data.next_sentence_prediction,
                seed + m as u64,
            )
        })
        .collect();
    let shares = ddp::shares(batches, n, accumulation, None, |m| {
        bert_data::seeds::dropout(seed, 0, m)
    });
    let mut opt = AdamW::<B>::new(config.optimizer.clone());
    let mut times = Vec::new();
    let mut last_loss = f64::NAN;
    let mut first_loss = f64::NAN;
    let mut peak_device_mib: Option<f64> = None;
    let lr = config.optimizer.learning_rate;
    // One replica per device (see crate::trainer::ddp).
    let work = ddp::Step {
        objective: &PretrainingObjective,
        precision,
        thread_streams: n > 1,
    };
    let model = std::thread::scope(|scope| -> Result<BertForPreTraining<B>> {
        let replicas =
            ddp::Replicas::start(scope, &devices, &work, &model, &opt, &config.optimizer)?;
        let mut model = model;
        // Drawn once: the timed steps clone them.
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
                lr,
                device,
                None,
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
            // Outside the timed span: the pools' reservation after the step.
            for d in &devices {
                if let Some(m) = crate::device_memory::of(d) {
                    peak_device_mib = Some(peak_device_mib.unwrap_or(0.0).max(m.reserved_mib));
                }
            }
            if i >= args.warmup {
                times.push(elapsed);
            }
        }
        Ok(model)
    })?;
    let stats = summary(&times);
    let median_s = stats["median"].as_f64().unwrap_or(f64::NAN) / 1e3;
    // The MLM head of ours runs on the masked positions of every micro-batch.
    let predicted = batch_size * masked_per_row(seq);
    let flops = (n * accumulation) as f64
        * train_flops(
            &bert_config,
            batch_size,
            seq,
            predicted,
            config.data.next_sentence_prediction,
        );
    let achieved = flops / median_s / 1e12;
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
        "fused_kernels": !args.no_fused_kernels,
        "mlm_head": "masked positions",
        "fixed_batch": args.fixed_batch,
        "threads": threads(),
        "steps": args.steps,
        "warmup": args.warmup,
        "step_time_ms": stats,
        "gradient_accumulation_steps": accumulation,
        "tokens_per_second": (n * accumulation * batch_size * seq) as f64 / median_s,
        "samples_per_second": (n * accumulation * batch_size) as f64 / median_s,
        "peak_rss_mib": peak_rss_mib(),
        "peak_device_mib": peak_device_mib,
        "model_tflops_per_step": flops / 1e12,
        "tflops_per_second": achieved,
        "peak_tflops": args.peak_tflops,
        "mfu": args.peak_tflops.map(|peak| achieved / peak),
        "first_loss": first_loss,
        "final_loss": last_loss,
        "parameters": model.valid().num_params(),
    }))
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
    }

    /// BERT-base at T = 128: the forward of a token is twice the 84.9M encoder matrix
    /// parameters plus the attention products, as in the MFU literature; the heads add their
    /// positions' and sequences' products.
    #[test]
    fn train_flops_count_the_matrix_products() {
        let base = BertConfig::base();
        let per_token = 2.0 * 84_934_656.0 + 4.0 * 128.0 * 768.0 * 12.0;
        let encoder_only = train_flops(&base, 1, 128, 0, false);
        assert_eq!(encoder_only, 3.0 * 128.0 * per_token);
        let heads = train_flops(&base, 2, 128, 38, true) - 2.0 * encoder_only;
        let mlm = 38.0 * 2.0 * (768.0 * 768.0 + 768.0 * 30522.0);
        let nsp = 2.0 * 2.0 * (768.0 * 768.0 + 2.0 * 768.0);
        assert_eq!(heads, 3.0 * (mlm + nsp));
    }
}
