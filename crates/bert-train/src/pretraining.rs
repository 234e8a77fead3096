//! Pretraining (MLM + NSP, or MLM only) as a [`Task`] of the [`Trainer`]: the corpus is
//! prepared once into shards, the training stream cuts, masks and pads batches on a worker
//! thread ([`StreamBatches`]), and the held-out stream is the same at every evaluation.
//!
//! Every random draw is a function of the seed and the step (data stream position, masks,
//! dropout), so a run stopped and resumed ends with the same weights as one that was not.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bert_data::prefetch::Prefetcher;
use bert_data::pretraining::{
    Documents, MaskVocab, PrepareOptions, PreparedCorpus, PretrainingBatch, PretrainingStream,
    StreamPosition, prepare,
};
use bert_data::{BertTokenizer, seeds};
use bert_model::{
    Architecture, BertForPreTraining, LoadOptions, PreTrainingTargets, load_pretrained,
    save_pretrained,
};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, Device, Int, Tensor, TensorData};

use crate::cluster::{Cluster, fingerprint};
use crate::config::PretrainConfig;
use crate::trainer::{
    BestMetric, DataSource, InferenceModel, Measured, MetricMap, Objective, RunDir, SaveKind,
    Stats, Task, Trainer, TrainerConfig,
};

/// What the host knows of pretraining micro-batches: masked positions, NSP pairs, tokens and
/// rows. Their losses and hits are the device sums (MLM loss, NSP loss, MLM hits, NSP hits).
#[derive(Debug, Clone, Copy, Default)]
pub struct PretrainingStats {
    mlm_count: usize,
    nsp_count: usize,
    tokens: usize,
    rows: usize,
}

/// The order of a pretraining micro-batch's device sums.
#[derive(Debug, Clone, Copy)]
enum Sums {
    MlmLoss,
    NspLoss,
    MlmCorrect,
    NspCorrect,
}

impl Sums {
    const COUNT: usize = 4;

    fn of(self, sums: &[f64]) -> f64 {
        sums.get(self as usize).copied().unwrap_or(f64::NAN)
    }
}

impl PretrainingStats {
    fn metrics(&self, sums: &[f64], batches: usize) -> MetricMap {
        let b = batches.max(1) as f64;
        let (mlm_loss, nsp_loss) = (Sums::MlmLoss.of(sums) / b, Sums::NspLoss.of(sums) / b);
        let mut m = MetricMap::new();
        m.insert("loss".into(), (mlm_loss + nsp_loss).into());
        m.insert("mlm_loss".into(), mlm_loss.into());
        m.insert(
            "mlm_accuracy".into(),
            (Sums::MlmCorrect.of(sums) / self.mlm_count.max(1) as f64).into(),
        );
        m.insert("perplexity".into(), mlm_loss.exp().into());
        if self.nsp_count > 0 {
            m.insert("nsp_loss".into(), nsp_loss.into());
            m.insert(
                "nsp_accuracy".into(),
                (Sums::NspCorrect.of(sums) / self.nsp_count as f64).into(),
            );
        }
        m
    }
}

impl Stats for PretrainingStats {
    fn merge(&mut self, o: Self) {
        self.mlm_count += o.mlm_count;
        self.nsp_count += o.nsp_count;
        self.tokens += o.tokens;
        self.rows += o.rows;
    }

    fn loss(&self, sums: &[f64], micro_batches: usize) -> f64 {
        (Sums::MlmLoss.of(sums) + Sums::NspLoss.of(sums)) / micro_batches.max(1) as f64
    }

    fn tokens(&self) -> usize {
        self.tokens
    }

    fn examples(&self) -> usize {
        self.rows
    }

    fn log_fields(&self, sums: &[f64], micro_batches: usize) -> MetricMap {
        self.metrics(sums, micro_batches)
    }

    fn summary(&self, sums: &[f64], _: usize) -> String {
        format!(
            " mlm_acc {:.3}",
            Sums::MlmCorrect.of(sums) / self.mlm_count.max(1) as f64
        )
    }
}

/// Forward pass and loss of a batch ([`BertForPreTraining::pretraining_loss`]): the loss
/// tensor, the device sums (MLM loss, NSP loss, MLM hits, NSP hits: `[4]`, not tracked; zeros
/// for a part the batch lacks) and the host's statistics. Reads nothing back.
pub fn forward<B: Backend>(
    model: &BertForPreTraining<B>,
    batch: &PretrainingBatch,
    device: &Device<B>,
) -> (Tensor<B, 1>, Tensor<B, 1>, PretrainingStats) {
    let t = batch.to_tensors::<B>(device);
    let mut positions = Vec::new();
    let mut labels = Vec::new();
    for (r, row) in batch.mlm_labels.iter().enumerate() {
        for (c, &label) in row.iter().enumerate() {
            if label >= 0 {
                positions.push((r * batch.seq_len + c) as i64);
                labels.push(label);
            }
        }
    }
    let n = positions.len();
    let nsp = &batch.next_sentence_labels;
    let targets = PreTrainingTargets {
        mlm_positions: Tensor::from_data(TensorData::new(positions, [n]), device),
        mlm_labels: Tensor::from_data(TensorData::new(labels, [n]), device),
        next_sentence_labels: nsp
            .iter()
            .all(|&l| l >= 0)
            .then(|| Tensor::from_data(TensorData::new(nsp.clone(), [nsp.len()]), device)),
    };
    let out = model.pretraining_loss(t.input, targets);
    let mut stats = PretrainingStats {
        mlm_count: n,
        tokens: batch.num_tokens(),
        rows: batch.input_ids.len(),
        ..Default::default()
    };
    let zero = || Tensor::<B, 1>::zeros([1], device);
    let value = |t: Tensor<B, 1>| t.detach().cast(DType::F32).reshape([1]);
    let hits = |t: Tensor<B, 1, Int>| t.float().cast(DType::F32).reshape([1]);
    let mut sums = vec![zero(); Sums::COUNT];
    if let (Some(correct), Some(loss)) = (out.mlm_correct, out.mlm_loss) {
        sums[Sums::MlmCorrect as usize] = hits(correct);
        sums[Sums::MlmLoss as usize] = value(loss);
    }
    if let (Some(correct), Some(loss)) = (out.nsp_correct, out.nsp_loss) {
        sums[Sums::NspCorrect as usize] = hits(correct);
        sums[Sums::NspLoss as usize] = value(loss);
        stats.nsp_count = nsp.len();
    }
    (out.loss, Tensor::cat(sums, 0), stats)
}

/// BERT's pretraining objective on [`PretrainingBatch`]es (also what `bert bench train` times).
#[derive(Debug, Clone, Copy, Default)]
pub struct PretrainingObjective;

impl<B: AutodiffBackend> Objective<B> for PretrainingObjective {
    type Model = BertForPreTraining<B>;
    type Batch = PretrainingBatch;
    type Stats = PretrainingStats;

    fn loss(
        &self,
        model: &BertForPreTraining<B>,
        batch: &PretrainingBatch,
        device: &Device<B>,
    ) -> Result<Measured<B, PretrainingStats>> {
        let (loss, sums, stats) = forward(model, batch, device);
        Ok(Measured::with_sums(loss, sums.inner(), stats))
    }
}

/// The held-out stream: the same sequences and masks at every evaluation.
pub fn eval_stream<'a>(
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
            .stream_config(seeds::eval_stream(config.training.seed)),
        StreamPosition::default(),
    )
}

/// Pretraining as the trainer's task: the objective, the held-out evaluation, and the HF
/// directory the model is written as.
#[derive(Debug)]
pub struct PretrainingTask<'a> {
    config: &'a PretrainConfig,
    data: &'a PretrainData,
}

impl<B: AutodiffBackend> Objective<B> for PretrainingTask<'_> {
    type Model = BertForPreTraining<B>;
    type Batch = PretrainingBatch;
    type Stats = PretrainingStats;

    fn loss(
        &self,
        model: &BertForPreTraining<B>,
        batch: &PretrainingBatch,
        device: &Device<B>,
    ) -> Result<Measured<B, PretrainingStats>> {
        let (loss, sums, stats) = forward(model, batch, device);
        Ok(Measured::with_sums(loss, sums.inner(), stats))
    }
}

impl<B: AutodiffBackend> Task<B> for PretrainingTask<'_> {
    fn describe(&self) -> String {
        let c = &self.data.bert_config;
        format!(
            "{} layers × {} hidden on {} documents",
            c.num_hidden_layers,
            c.hidden_size,
            self.data.train_corpus.num_documents()
        )
    }

    fn evaluate(
        &self,
        model: &InferenceModel<B, Self>,
        device: &Device<B>,
    ) -> Result<Option<MetricMap>> {
        let Some(valid) = &self.data.valid_corpus else {
            return Ok(None);
        };
        let mut stream = eval_stream(valid, &self.data.vocab, &self.data.special, self.config);
        let mut total = PretrainingStats::default();
        let mut sums = None;
        let mut batches = 0usize;
        for _ in 0..self.config.training.eval_batches.max(1) {
            let Some(batch) = stream.next_batch(self.config.training.batch_size) else {
                break;
            };
            let (_, batch_sums, s) = forward(model, &batch, device);
            total.merge(s);
            sums = Some(match sums {
                Some(all) => all + batch_sums,
                None => batch_sums,
            });
            batches += 1;
        }
        let sums = match sums {
            Some(sums) => crate::trainer::read_sums(sums, "pretraining sums")?,
            None => vec![0.0; Sums::COUNT],
        };
        Ok(Some(total.metrics(&sums, batches)))
    }

    fn eval_message(&self, m: &MetricMap) -> String {
        let get = |k: &str| {
            m.get(k)
                .and_then(serde_json::Value::as_f64)
                .unwrap_or(f64::NAN)
        };
        format!(
            "mlm_loss {:.4}, mlm_accuracy {:.3}",
            get("mlm_loss"),
            get("mlm_accuracy")
        )
    }

    fn save(&self, model: &InferenceModel<B, Self>, dir: &Path, kind: SaveKind) -> Result<()> {
        save_pretrained(model, &self.data.bert_config, dir)?;
        if kind == SaveKind::Export {
            self.data.tokenizer.save(dir)?;
        }
        Ok(())
    }

    fn load(
        &self,
        model: BertForPreTraining<B>,
        dir: &Path,
        _: &Device<B>,
    ) -> Result<BertForPreTraining<B>> {
        let (model, _) =
            bert_model::load_weights(model, &dir.join("model.safetensors"), LoadOptions::strict())?;
        Ok(model)
    }
}

/// The training stream's batches, cut, masked and padded ahead on a worker thread; each
/// comes with the stream position after it, which is what a checkpoint records.
pub struct StreamBatches<'scope> {
    ahead: Prefetcher<'scope, (PretrainingBatch, StreamPosition)>,
    position: StreamPosition,
}

impl std::fmt::Debug for StreamBatches<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamBatches")
            .field("position", &self.position)
            .finish_non_exhaustive()
    }
}

impl<'scope> StreamBatches<'scope> {
    /// Batches of `batch_size` sequences from `stream`, `depth` prepared ahead (0: on the
    /// training thread).
    pub fn new<'env>(
        scope: &'scope std::thread::Scope<'scope, 'env>,
        mut stream: PretrainingStream<'env, PreparedCorpus>,
        batch_size: usize,
        depth: usize,
    ) -> Self {
        let position = stream.position();
        let ahead = Prefetcher::new(scope, depth, move || {
            let batch = stream.next_batch(batch_size)?;
            Some((batch, stream.position()))
        });
        Self { ahead, position }
    }
}

impl DataSource<PretrainingBatch> for StreamBatches<'_> {
    type Position = StreamPosition;

    fn next_step(&mut self, _: u64, count: usize) -> Result<Vec<PretrainingBatch>> {
        let mut batches = Vec::with_capacity(count);
        for _ in 0..count {
            let (batch, after) = self.ahead.next().context("the corpus yields no sequence")?;
            self.position = after;
            batches.push(batch);
        }
        Ok(batches)
    }

    fn epoch(&self) -> u64 {
        self.position.epoch
    }

    fn position(&self) -> StreamPosition {
        self.position
    }

    fn take_waited(&mut self) -> Option<Duration> {
        Some(self.ahead.take_waited())
    }
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
#[derive(Debug)]
pub struct PretrainData {
    pub init_dir: Option<PathBuf>,
    pub tokenizer: BertTokenizer,
    pub bert_config: bert_model::BertConfig,
    pub train_corpus: PreparedCorpus,
    pub valid_corpus: Option<PreparedCorpus>,
    pub vocab: MaskVocab,
    pub special: bert_data::SpecialTokens,
}

impl PretrainData {
    pub fn open(config: &PretrainConfig) -> Result<Self> {
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
        if bert_config.type_vocab_size < 2 {
            bail!(
                "the model's type_vocab_size is {}: pretraining sequences have two segments (token type ids 0 and 1)",
                bert_config.type_vocab_size
            );
        }
        bert_config.architectures = vec![Architecture::PreTraining.name().into()];
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

/// `bert pretrain`: trains (or, with `resume`, continues) the run `config` describes on the
/// backend of `device` (`training.devices` picks among its kind).
pub fn train<B: AutodiffBackend>(
    config: &PretrainConfig,
    resume: bool,
    device: &Device<B>,
) -> Result<()> {
    // What every node shares: each has its own node rank.
    let mut shared = config.clone();
    shared.distributed.node_rank = 0;
    let config_toml = toml::to_string(&shared)?;
    // One process, or one rank of a multi-node run (`bert launch`, mpirun): every rank runs the
    // same configuration; rank 0 creates the run and prepares the corpus before the others
    // open them.
    // (The trainer finds it as this thread's current cluster; MPI ends when it is dropped.)
    let cluster = Cluster::init(&config.distributed)?;
    cluster.agree("the configuration", fingerprint(config_toml.as_bytes()))?;
    let (run, data) = cluster.rank_zero_first(|| -> Result<_> {
        let run = RunDir::create(&config.output.dir, resume, &config_toml)?;
        // Device and precision problems are reported before the corpus is prepared.
        crate::trainer::devices::<B>(device, &config.training)?;
        Ok((run, PretrainData::open(config)?))
    })?;
    let devices = crate::trainer::devices::<B>(device, &config.training)?;
    let device = &devices[0];
    B::seed(device, seeds::init(config.training.seed));
    let model = match &data.init_dir {
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
        None => BertForPreTraining::new(&data.bert_config, device),
    };
    let task = PretrainingTask {
        config,
        data: &data,
    };
    let trainer_config = TrainerConfig {
        training: config.training.clone(),
        optimizer: config.optimizer.clone(),
        schedule: config.schedule.clone(),
        total_steps: config.training.max_steps,
        best: BestMetric::minimize("loss"),
        what: "pretraining",
    };
    let trainer = Trainer::new(run, trainer_config, devices, model, &task)?;
    let stream = PretrainingStream::new(
        &data.train_corpus,
        data.vocab.clone(),
        data.special.cls,
        data.special.sep,
        data.special.pad,
        config.data.stream_config(config.training.seed),
        trainer.data_position()?,
    );
    let trained = std::thread::scope(|scope| {
        let mut batches = StreamBatches::new(
            scope,
            stream,
            config.training.batch_size,
            config.training.prefetch_batches,
        );
        trainer.fit(&task, &mut batches).map(|_| ())
    });
    cluster.or_abort(trained)
}
