//! `bert pretrain`: MLM (+ NSP) pretraining from scratch or from an HF directory, on prepared
//! shards, with exact resume.
//!
//! The loop reads top to bottom: batch → forward (MLM logits only at masked positions) → loss →
//! backward → global-norm clip + AdamW → metrics → eval → checkpoint. Every random draw is a
//! function of the seed and the step (data stream position, masks, dropout: the backend is
//! reseeded each step), so a run stopped and resumed ends with the same weights as one that
//! was not.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use bert_data::BertTokenizer;
use bert_data::prefetch::Prefetcher;
use bert_data::pretraining::stream::derive_seed;
use bert_data::pretraining::{
    Documents, MaskVocab, PrepareOptions, PreparedCorpus, PretrainingBatch, PretrainingStream,
    StreamPosition, prepare,
};
use bert_model::checkpoint::write_atomically;
use bert_model::loss::cross_entropy;
use bert_model::{BertForPreTraining, LoadOptions, load_pretrained, save_pretrained};
use burn::module::AutodiffModule;
use burn::optim::GradientsParams;
use burn::tensor::ElementConversion;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::backend::BackendKind;
use crate::config::{self, Precision, PretrainConfig};
use crate::optim::{Accumulation, AdamW, lr_at};
use crate::{ddp, rundir};

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

/// What a checkpoint records besides weights and optimizer moments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps done.
    pub step: u64,
    /// Where the training stream is.
    pub stream: StreamPosition,
    /// Sequences seen.
    pub examples: u64,
    /// Best eval loss so far.
    pub best_eval_loss: Option<f64>,
}

/// Losses and accuracies of one batch.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct BatchStats {
    pub loss: f64,
    mlm_loss: f64,
    nsp_loss: f64,
    mlm_correct: usize,
    mlm_count: usize,
    nsp_correct: usize,
    nsp_count: usize,
}

impl BatchStats {
    /// Adds one of `n` micro-batches: losses averaged, counts summed.
    pub(crate) fn add(&mut self, other: &BatchStats, n: usize) {
        let n = n.max(1) as f64;
        self.loss += other.loss / n;
        self.mlm_loss += other.mlm_loss / n;
        self.nsp_loss += other.nsp_loss / n;
        self.mlm_correct += other.mlm_correct;
        self.mlm_count += other.mlm_count;
        self.nsp_correct += other.nsp_correct;
        self.nsp_count += other.nsp_count;
    }
}

fn correct<B: Backend>(logits: Tensor<B, 2>, targets: Tensor<B, 1, Int>) -> usize {
    let [n, _] = logits.dims();
    let hits = logits.argmax(1).reshape([n]).equal(targets).int().sum();
    hits.into_scalar().elem::<i64>().max(0) as usize
}

/// A pretraining replica's step: forward and backward of its micro-batches (in the compute
/// precision), MLM/NSP statistics averaged over them.
pub(crate) struct Pretraining {
    pub precision: Precision,
}

impl<B: AutodiffBackend> ddp::Work<B> for Pretraining {
    type Model = BertForPreTraining<B>;
    type Share = Vec<PretrainingBatch>;
    type Stats = BatchStats;

    fn gradients(
        &self,
        model: &BertForPreTraining<B>,
        batches: &Vec<PretrainingBatch>,
        device: &Device<B>,
    ) -> Result<(GradientsParams, BatchStats)> {
        let mut stats = BatchStats::default();
        let mut accumulation = Accumulation::default();
        for batch in batches {
            let (loss, s) = forward(&self.precision.compute_copy(model), batch, device);
            stats.add(&s, batches.len());
            accumulation.add(model, loss.backward());
        }
        Ok((accumulation.take().0, stats))
    }
}

/// Forward pass and loss of a batch: `(loss tensor, stats)`.
pub(crate) fn forward<B: Backend>(
    model: &BertForPreTraining<B>,
    batch: &PretrainingBatch,
    device: &Device<B>,
) -> (Tensor<B, 1>, BatchStats) {
    let t = batch.to_tensors::<B>(device);
    let out = model.bert.forward(t.input, false);
    let mut positions = Vec::new();
    let mut targets = Vec::new();
    for (r, row) in batch.mlm_labels.iter().enumerate() {
        for (c, &label) in row.iter().enumerate() {
            if label >= 0 {
                positions.push((r * batch.seq_len + c) as i64);
                targets.push(label);
            }
        }
    }
    let mut stats = BatchStats {
        mlm_count: positions.len(),
        ..Default::default()
    };
    let pooled = out.pooler_output.clone();
    let mut loss = Tensor::<B, 1>::zeros([1], device);
    if !positions.is_empty() {
        let n = positions.len();
        let pos = Tensor::<B, 1, Int>::from_data(TensorData::new(positions, [n]), device);
        let tgt = Tensor::<B, 1, Int>::from_data(TensorData::new(targets, [n]), device);
        let logits = model.mlm_logits_at(out.last_hidden_state, pos);
        stats.mlm_correct = correct(logits.clone(), tgt.clone());
        let mlm = cross_entropy(logits, tgt);
        stats.mlm_loss = f64::from(mlm.clone().into_scalar().elem::<f32>());
        loss = loss + mlm;
    }
    let nsp: Vec<i64> = batch.next_sentence_labels.clone();
    if let (Some(pooled), true) = (pooled, nsp.iter().all(|&l| l >= 0)) {
        let n = nsp.len();
        let tgt = Tensor::<B, 1, Int>::from_data(TensorData::new(nsp, [n]), device);
        let logits = model.cls.seq_relationship.forward(pooled);
        stats.nsp_correct = correct(logits.clone(), tgt.clone());
        stats.nsp_count = n;
        let nsp_loss = cross_entropy(logits, tgt);
        stats.nsp_loss = f64::from(nsp_loss.clone().into_scalar().elem::<f32>());
        loss = loss + nsp_loss;
    }
    stats.loss = stats.mlm_loss + stats.nsp_loss;
    (loss, stats)
}

/// The held-out stream: the same sequences and masks at every evaluation.
fn eval_stream<'a>(
    corpus: &'a PreparedCorpus,
    vocab: &MaskVocab,
    special: &bert_data::SpecialTokens,
    config: &PretrainConfig,
) -> PretrainingStream<'a, PreparedCorpus> {
    PretrainingStream::new(
        corpus,
        vocab.clone(),
        special.cls,
        special.sep,
        special.pad,
        config
            .data
            .stream_config(derive_seed(&[config.training.seed, 99])),
        StreamPosition::default(),
    )
}

fn evaluate<B: Backend>(
    model: &BertForPreTraining<B>,
    corpus: &PreparedCorpus,
    vocab: &MaskVocab,
    special: &bert_data::SpecialTokens,
    config: &PretrainConfig,
    device: &Device<B>,
) -> BatchStats {
    let mut stream = eval_stream(corpus, vocab, special, config);
    let mut total = BatchStats::default();
    let mut batches = 0usize;
    for _ in 0..config.training.eval_batches.max(1) {
        let Some(batch) = stream.next_batch(config.training.batch_size) else {
            break;
        };
        let (_, s) = forward(model, &batch, device);
        total.mlm_loss += s.mlm_loss;
        total.nsp_loss += s.nsp_loss;
        total.mlm_correct += s.mlm_correct;
        total.mlm_count += s.mlm_count;
        total.nsp_correct += s.nsp_correct;
        total.nsp_count += s.nsp_count;
        batches += 1;
    }
    let b = batches.max(1) as f64;
    total.mlm_loss /= b;
    total.nsp_loss /= b;
    total.loss = total.mlm_loss + total.nsp_loss;
    total
}

fn stats_json(split: &str, step: u64, epoch: u64, s: &BatchStats) -> serde_json::Value {
    let mut v = serde_json::json!({
        "split": split, "step": step, "epoch": epoch,
        "loss": s.loss, "mlm_loss": s.mlm_loss,
        "mlm_accuracy": s.mlm_correct as f64 / s.mlm_count.max(1) as f64,
        "perplexity": s.mlm_loss.exp(),
    });
    if s.nsp_count > 0 {
        v["nsp_loss"] = serde_json::json!(s.nsp_loss);
        v["nsp_accuracy"] = serde_json::json!(s.nsp_correct as f64 / s.nsp_count as f64);
    }
    v
}

fn prepared(
    config: &PretrainConfig,
    split: &str,
    files: &[String],
    tokenizer: &BertTokenizer,
) -> Result<PathBuf> {
    let dir = config
        .data
        .prepared_dir
        .clone()
        .unwrap_or_else(|| config.output.dir.join("prepared"))
        .join(split);
    let report = prepare(
        &PrepareOptions {
            inputs: files.to_vec(),
            output: dir.clone(),
            chunk_lines: config.data.chunk_lines,
            progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        },
        tokenizer,
    )
    .with_context(|| format!("cannot prepare the {split} data"))?;
    if report.written > 0 {
        eprintln!(
            "{split}: prepared {} documents, {} tokens in {}",
            report.documents,
            report.tokens,
            dir.display()
        );
    }
    Ok(dir)
}

/// Everything a run reads before its model: tokenizer (trained at the first run when asked),
/// model config, prepared corpora, masking vocabulary.
struct PretrainData {
    init_dir: Option<PathBuf>,
    tokenizer: BertTokenizer,
    bert_config: bert_model::BertConfig,
    train_corpus: PreparedCorpus,
    valid_corpus: Option<PreparedCorpus>,
    vocab: MaskVocab,
    special: bert_data::SpecialTokens,
}

impl PretrainData {
    fn open(config: &PretrainConfig) -> Result<Self> {
        let init_dir = match &config.model.init_from {
            Some(m) => Some(crate::hub::resolve_model(Path::new(m))?),
            None => None,
        };
        let tokenizer_dir = config
            .data
            .tokenizer
            .clone()
            .or_else(|| init_dir.clone())
            .context("no tokenizer: set data.tokenizer or model.init_from")?;
        if let Some(vocab_size) = config.data.train_tokenizer_vocab_size
            && !["tokenizer.json", "vocab.txt"]
                .iter()
                .any(|f| tokenizer_dir.join(f).is_file())
        {
            let files = bert_data::pretraining::shards::expand_inputs(&config.data.train_files)?;
            eprintln!(
                "training a {vocab_size}-token WordPiece vocabulary into {}",
                tokenizer_dir.display()
            );
            BertTokenizer::train(
                &files,
                vocab_size,
                false,
                2,
                std::io::IsTerminal::is_terminal(&std::io::stderr()),
            )?
            .save(&tokenizer_dir)?;
        }
        let tokenizer_dir = crate::hub::resolve_model(&tokenizer_dir)?;
        let tokenizer = BertTokenizer::from_dir(&tokenizer_dir)
            .with_context(|| format!("cannot load the tokenizer of {}", tokenizer_dir.display()))?;
        let mut bert_config = config.model.bert_config(init_dir.as_deref())?;
        if init_dir.is_none() && !config.model.fields.contains_key("vocab_size") {
            bert_config.vocab_size = tokenizer.vocab_size();
        }
        if bert_config.vocab_size < tokenizer.vocab_size() {
            bail!(
                "the model's vocab_size {} is smaller than the tokenizer's {}",
                bert_config.vocab_size,
                tokenizer.vocab_size()
            );
        }
        if bert_config.max_position_embeddings < config.data.max_seq_length {
            bail!(
                "data.max_seq_length {} exceeds the model's max_position_embeddings {}",
                config.data.max_seq_length,
                bert_config.max_position_embeddings
            );
        }
        bert_config.architectures = vec!["BertForPreTraining".into()];
        if config.data.train_files.is_empty() {
            bail!("data.train_files is empty");
        }
        let train_dir = prepared(config, "train", &config.data.train_files, &tokenizer)?;
        let train_corpus = PreparedCorpus::open(&train_dir, Some(&tokenizer))?;
        let valid_corpus = if config.data.valid_files.is_empty() {
            None
        } else {
            Some(PreparedCorpus::open(
                prepared(config, "valid", &config.data.valid_files, &tokenizer)?,
                Some(&tokenizer),
            )?)
        };
        let vocab = MaskVocab::from_tokenizer(&tokenizer)?;
        let special = tokenizer.special_tokens().clone();
        Ok(Self {
            init_dir,
            tokenizer,
            bert_config,
            train_corpus,
            valid_corpus,
            vocab,
            special,
        })
    }
}

fn train<B: AutodiffBackend>(
    config: &PretrainConfig,
    resume: bool,
    device: &Device<B>,
) -> Result<()> {
    let out = &config.output.dir;
    let resume_from = rundir::check_resume(out, resume)?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    write_atomically(
        &out.join("config.toml"),
        toml::to_string(config)?.as_bytes(),
    )?;

    // Device and precision problems are reported before the corpus is prepared.
    let precision = config.training.precision;
    let devices = ddp::devices::<B>(device, &config.training.devices)?;
    // Replica 0 (this thread, checkpoints and evaluation) runs on the first listed device.
    let device = &devices[0];
    precision.check::<B>(device)?;

    let PretrainData {
        init_dir,
        tokenizer,
        bert_config,
        train_corpus,
        valid_corpus,
        vocab,
        special,
    } = PretrainData::open(config)?;

    let seed = config.training.seed;
    B::seed(device, derive_seed(&[seed, 0]));
    let mut model = match &init_dir {
        Some(dir) => {
            let (m, _, report) =
                load_pretrained::<B, BertForPreTraining<B>>(dir, LoadOptions::partial(), device)?;
            if !report.missing.is_empty() {
                eprintln!(
                    "initialised from {}; new (randomly initialised): {}",
                    dir.display(),
                    report.missing.join(", ")
                );
            }
            m
        }
        None => BertForPreTraining::new(&bert_config, device),
    };
    let mut opt = AdamW::<B>::new(config.optimizer.clone());
    let mut state = TrainerState {
        step: 0,
        stream: StreamPosition::default(),
        examples: 0,
        best_eval_loss: None,
    };
    if let Some(dir) = resume_from {
        let (m, st) =
            rundir::load_checkpoint(&dir, model, &mut opt, |s: &TrainerState| s.step, device)?;
        model = m;
        state = st;
        eprintln!("resumed from {} at step {}", dir.display(), state.step);
    }

    let mut stream = PretrainingStream::new(
        &train_corpus,
        vocab.clone(),
        special.cls,
        special.sep,
        special.pad,
        config.data.stream_config(seed),
        state.stream,
    );
    let batch_size = config.training.batch_size;
    let work = Pretraining { precision };
    std::thread::scope(|scope| {
        // Batches are cut, masked and padded on a worker thread; each comes with the stream
        // position after it, which is what a checkpoint records.
        let mut batches = Prefetcher::new(scope, config.training.prefetch_batches, move || {
            let batch = stream.next_batch(batch_size)?;
            Some((batch, stream.position()))
        });
        let mut metrics = rundir::Metrics::open(out)?;
        let interrupted = rundir::interrupt_flag();
        let total = config.training.max_steps;
        let progress = crate::progress::TrainingProgress::new(total, state.step, "pretraining");
        let started = Instant::now();
        let mut window_tokens = 0usize;
        let mut window_start = Instant::now();
        eprintln!(
            "pretraining {} layers × {} hidden ({:.1}M parameters) on {} documents, steps {}..{total}",
            bert_config.num_hidden_layers,
            bert_config.hidden_size,
            burn::module::Module::num_params(&model) as f64 / 1e6,
            train_corpus.num_documents(),
            state.step
        );
        // Data parallelism: replicas 1.. run on worker threads, one per extra device, with
        // their own copy of the weights and optimizer state; every step each replica gets its
        // own micro-batches and the gradients are averaged by Burn's collective all-reduce, so
        // the replicas stay identical. Replica 0 is this thread.
        let replicas = ddp::Replicas::start(
            scope,
            &devices,
            &work,
            &model,
            &opt,
            &config.optimizer,
            seed,
        )?;
        let micro_batches = config.training.gradient_accumulation_steps.max(1);
        while state.step < total {
            let step = state.step;
            let lr = lr_at(
                step,
                total,
                config.optimizer.learning_rate,
                &config.schedule,
            );
            let mut position = state.stream;
            let mut shares: Vec<Vec<PretrainingBatch>> = vec![Vec::new(); devices.len()];
            for _ in 0..micro_batches {
                for share in &mut shares {
                    let (batch, after) = batches.next().context("the corpus yields no sequence")?;
                    position = after;
                    share.push(batch);
                }
            }
            let batch_tokens: usize = shares.iter().flatten().map(|b| b.num_tokens()).sum();
            let batch_rows: usize = shares.iter().flatten().map(|b| b.input_ids.len()).sum();
            B::seed(device, derive_seed(&[seed, step, 5]));
            let (next, replica_stats, step_stats) = replicas.step(
                &work,
                model,
                &mut opt,
                shares,
                micro_batches * devices.len(),
                step,
                lr,
                device,
            )?;
            model = next;
            let mut stats = BatchStats::default();
            for s in &replica_stats {
                stats.add(s, devices.len());
            }
            if !stats.loss.is_finite() {
                return Err(rundir::diverged(stats.loss, step + 1, out));
            }
            state.step += 1;
            state.examples += batch_rows as u64;
            state.stream = position;
            window_tokens += batch_tokens;
            progress.step(stats.loss);
            let epoch = state.stream.epoch;
            if state
                .step
                .is_multiple_of(config.training.log_every_steps.max(1))
                || state.step == total
            {
                let secs = window_start.elapsed().as_secs_f64();
                let mut line = stats_json("train", state.step, epoch, &stats);
                line["lr"] = serde_json::json!(step_stats.lr);
                line["grad_norm"] = serde_json::json!(step_stats.grad_norm);
                line["tokens_per_second"] =
                    serde_json::json!(window_tokens as f64 / secs.max(1e-9));
                // Share of the window the step spent waiting for its batches (0 when the
                // prefetch worker keeps up).
                line["data_wait_fraction"] =
                    serde_json::json!(batches.take_waited().as_secs_f64() / secs.max(1e-9));
                progress.log(|| {
                    format!(
                        "step {}/{total} loss {:.4} mlm_acc {:.3} lr {:.2e} {:.0} tok/s, data wait {:.1}%",
                        state.step,
                        stats.loss,
                        line["mlm_accuracy"].as_f64().unwrap_or(0.0),
                        lr,
                        line["tokens_per_second"].as_f64().unwrap_or(0.0),
                        100.0 * line["data_wait_fraction"].as_f64().unwrap_or(0.0)
                    )
                });
                metrics.write(&line)?;
                window_tokens = 0;
                window_start = Instant::now();
            }
            let eval_now = rundir::due(config.training.eval_every_steps, state.step);
            if let Some(valid) = &valid_corpus
                && (eval_now || state.step == total)
            {
                let eval_start = Instant::now();
                let inner = model.valid();
                let s = evaluate(&inner, valid, &vocab, &special, config, device);
                // tokens_per_second counts training time only.
                window_start += eval_start.elapsed();
                let eval = stats_json("eval", state.step, epoch, &s);
                if state.best_eval_loss.is_none_or(|b| s.loss < b) {
                    state.best_eval_loss = Some(s.loss);
                    rundir::save_model_dir(
                        &inner,
                        &bert_config,
                        &tokenizer,
                        &out.join("best"),
                        &[("eval.json", serde_json::to_string_pretty(&eval)?)],
                    )?;
                }
                metrics.write(&eval)?;
                let line = format!(
                    "eval at step {}: mlm_loss {:.4}, mlm_accuracy {:.3}",
                    state.step,
                    s.mlm_loss,
                    s.mlm_correct as f64 / s.mlm_count.max(1) as f64
                );
                progress.say(line);
            }
            let save_now = rundir::due(config.training.save_every_steps, state.step);
            let stop = rundir::stop_requested(&interrupted, &config.training, state.step, total);
            if save_now || state.step == total || stop {
                rundir::save_checkpoint(
                    out,
                    state.step,
                    &model,
                    &bert_config,
                    &opt,
                    &state,
                    config.training.keep_checkpoints,
                )?;
            }
            if stop {
                progress.finish();
                eprintln!(
                    "stopped: checkpoint saved at step {}; continue with --resume",
                    state.step
                );
                return Ok(());
            }
        }
        progress.finish();
        let final_dir = out.join("final");
        save_pretrained(&model.valid(), &bert_config, &final_dir)?;
        tokenizer.save(&final_dir)?;
        if let Err(e) = crate::plot::loss_plot(out) {
            eprintln!("warning: no loss.png: {e:#}");
        }
        eprintln!(
            "done: {} steps in {:.0}s; model in {}",
            state.step,
            started.elapsed().as_secs_f64(),
            final_dir.display()
        );
        Ok(())
    })
}

/// `bert pretrain`.
pub fn run(args: &PretrainArgs) -> Result<()> {
    let (config, _) = config::load::<PretrainConfig>(&args.config, &args.set)?;
    let kind = BackendKind::resolve(config.training.backend.as_deref())?;
    crate::with_backend!(kind, |B, device| train::<burn::backend::Autodiff<B>>(
        &config,
        args.resume,
        &device
    )?);
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
