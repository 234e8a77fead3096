//! The model side of `bert serve`: one thread owns the model and runs every forward pass.
//! Requests reach it through a bounded queue ([`Queue`]); each time it wakes it takes the
//! waiting requests up to `max_batch_tokens` tokens, sorts their rows by length, runs them in
//! forward passes of at most `max_batch_tokens` tokens, and answers each request. On the CPU
//! an encoder without heads (the embedding models) runs its rows packed, without padding
//! ([`bert_model::PackedInput`]); otherwise each pass pads to its longest row, and rows are
//! split into passes of similar lengths.

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::Instant;

use anyhow::{Context, Result};
use bert_data::{Padding, pad_rows};
use bert_model::{BertConfig, BertInput, BertModel, PackedInput, packed_first, packed_mean};
use burn::tensor::backend::Backend;
use burn::tensor::{Device, Int, Tensor, TensorData};
use tokio::sync::oneshot;

use super::metrics::Metrics;
use crate::commands::encode::{HeadOutput, Loaded};

/// One tokenized input.
#[derive(Debug, Clone)]
pub struct Row {
    /// Token ids, `[CLS] … [SEP]`.
    pub input_ids: Vec<u32>,
    /// Segment ids.
    pub token_type_ids: Vec<u32>,
    /// The positions whose per-token head logits (token classification, MLM) the request
    /// needs.
    pub token_logits: TokenLogits,
}

impl Row {
    /// A row that needs no per-token logits.
    pub fn new(input_ids: Vec<u32>, token_type_ids: Vec<u32>) -> Self {
        Self {
            input_ids,
            token_type_ids,
            token_logits: TokenLogits::None,
        }
    }
}

/// Which positions of a row get their per-token head logits back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenLogits {
    /// None.
    None,
    /// Every real token.
    All,
    /// These positions (an MLM's vocabulary-wide logits only where they are needed).
    At(Vec<usize>),
}

impl TokenLogits {
    fn positions(&self, len: usize) -> Vec<usize> {
        match self {
            Self::None => Vec::new(),
            Self::All => (0..len).collect(),
            Self::At(at) => at.iter().copied().filter(|&p| p < len).collect(),
        }
    }
}

/// What the model gives for one row.
#[derive(Debug, Clone, Default)]
pub struct RowOutput {
    /// The pooled sentence embedding (the model's [`Pooling`]), not normalized.
    pub embedding: Vec<f32>,
    /// The sequence-classification logits, for a model with that head.
    pub logits: Option<Vec<f32>>,
    /// The per-token head's logits at the row's [`TokenLogits`] positions, in their order.
    pub token_logits: Vec<Vec<f32>>,
    /// The question-answering head's start and end logits over the row's tokens.
    pub span_logits: Option<(Vec<f32>, Vec<f32>)>,
}

/// How token vectors become one sentence embedding: sentence-transformers'
/// `1_Pooling/config.json` when the model directory has one, else the mean over real tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// Mean over the real (unpadded) tokens.
    Mean,
    /// The `[CLS]` token's vector.
    Cls,
}

impl Pooling {
    /// The pooling of the model in `dir`.
    pub fn of_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("1_Pooling/config.json");
        if !path.is_file() {
            return Ok(Self::Mean);
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: invalid JSON", path.display()))?;
        let on = |key: &str| value[key].as_bool().unwrap_or(false);
        match (on("pooling_mode_cls_token"), on("pooling_mode_mean_tokens")) {
            (true, false) => Ok(Self::Cls),
            (false, true) => Ok(Self::Mean),
            _ => anyhow::bail!(
                "{}: only one of pooling_mode_cls_token and pooling_mode_mean_tokens can be \
                 served",
                path.display()
            ),
        }
    }
}

/// A request for the model: its rows and where the answer goes.
#[derive(Debug)]
pub struct Job {
    /// The rows, in the request's order.
    pub rows: Vec<Row>,
    /// One output per row, or why the forward pass failed.
    pub reply: oneshot::Sender<Result<Vec<RowOutput>, String>>,
}

impl Job {
    fn tokens(&self) -> usize {
        self.rows.iter().map(|r| r.input_ids.len()).sum()
    }
}

/// The sending end of the model's queue (cheap to clone).
#[derive(Debug, Clone)]
pub struct Queue {
    sender: SyncSender<Job>,
    waiting: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
}

impl Queue {
    /// Queues `job`; gives it back when the queue is full.
    pub fn submit(&self, job: Job) -> std::result::Result<(), Job> {
        // Counted before it is sent: the model thread may take it at once.
        let n = self.waiting.fetch_add(1, Ordering::SeqCst) + 1;
        match self.sender.try_send(job) {
            Ok(()) => {
                self.metrics.queue_size.set(n as i64);
                Ok(())
            }
            Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => {
                self.waiting.fetch_sub(1, Ordering::SeqCst);
                Err(job)
            }
        }
    }
}

/// Batching limits of the model thread.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    /// Requests that may wait in the queue.
    pub capacity: usize,
    /// Padded tokens of one forward pass (and real tokens taken per wake-up).
    pub max_batch_tokens: usize,
    /// What running one more forward pass costs, in padded tokens: rows are split into
    /// passes of similar lengths where that costs less than padding them together.
    pub pass_cost: usize,
}

/// Loads the model of `dir` on `device` and starts its thread; the thread ends when every
/// [`Queue`] is dropped.
pub fn start<B: Backend>(
    dir: &Path,
    config: &BertConfig,
    pooling: Pooling,
    batching: Batching,
    metrics: Arc<Metrics>,
    device: Device<B>,
) -> Result<(Queue, JoinHandle<()>)> {
    let architecture = crate::commands::encode::architecture_of(config);
    let model = Loaded::<B>::new(architecture, dir, &device)?;
    let (sender, receiver) = sync_channel::<Job>(batching.capacity.max(1));
    let waiting = Arc::new(AtomicUsize::new(0));
    let queue = Queue {
        sender,
        waiting: waiting.clone(),
        metrics: metrics.clone(),
    };
    let worker = Worker {
        model,
        pooling,
        pad: config.pad_token_id as u32,
        max_batch_tokens: batching.max_batch_tokens.max(1),
        pass_cost: batching.pass_cost,
        waiting,
        metrics,
        device,
    };
    let handle = std::thread::Builder::new()
        .name("bert-serve-model".into())
        .spawn(move || worker.run(receiver))
        .context("cannot start the model thread")?;
    Ok((queue, handle))
}

struct Worker<B: Backend> {
    model: Loaded<B>,
    pooling: Pooling,
    pad: u32,
    max_batch_tokens: usize,
    pass_cost: usize,
    waiting: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
    device: Device<B>,
}

impl<B: Backend> Worker<B> {
    fn run(self, receiver: Receiver<Job>) {
        while let Ok(first) = receiver.recv() {
            let mut tokens = first.tokens();
            let mut jobs = vec![first];
            while tokens < self.max_batch_tokens {
                match receiver.try_recv() {
                    Ok(job) => {
                        tokens += job.tokens();
                        jobs.push(job);
                    }
                    Err(_) => break,
                }
            }
            let taken = jobs.len();
            let left = self
                .waiting
                .fetch_sub(taken, Ordering::SeqCst)
                .saturating_sub(taken);
            self.metrics.queue_size.set(left as i64);
            self.answer(jobs);
        }
    }

    /// Runs the rows of `jobs`, longest first, in forward passes within the token budget, and
    /// answers every job.
    fn answer(&self, jobs: Vec<Job>) {
        let mut order: Vec<(usize, usize)> = jobs
            .iter()
            .enumerate()
            .flat_map(|(j, job)| (0..job.rows.len()).map(move |r| (j, r)))
            .collect();
        order.sort_by_key(|&(j, r)| std::cmp::Reverse(jobs[j].rows[r].input_ids.len()));
        let mut outputs: Vec<Vec<Option<RowOutput>>> =
            jobs.iter().map(|j| vec![None; j.rows.len()]).collect();
        let mut failure = None;
        let lengths: Vec<usize> = order
            .iter()
            .map(|&(j, r)| jobs[j].rows[r].input_ids.len())
            .collect();
        // An encoder without heads runs its rows packed, without padding, where packed
        // attention is one fused kernel (the CPU); otherwise rows go in padded passes of
        // similar lengths.
        let packed = match &self.model {
            Loaded::Base(model) if bert_model::ops::packed_attention_is_fused::<B>() => Some(model),
            _ => None,
        };
        let split = match packed {
            Some(_) => packs(&lengths, self.max_batch_tokens),
            None => passes(&lengths, self.max_batch_tokens, self.pass_cost),
        };
        for pass in split {
            let chunk = &order[pass];
            let rows: Vec<&Row> = chunk.iter().map(|&(j, r)| &jobs[j].rows[r]).collect();
            let forwarded = match packed {
                Some(model) => self.forward_packed(model, &rows),
                None => self.forward(&rows),
            };
            match forwarded {
                Ok(results) => {
                    for (&(j, r), out) in chunk.iter().zip(results) {
                        outputs[j][r] = Some(out);
                    }
                }
                Err(e) => failure = Some(format!("{e:#}")),
            }
        }
        for (job, outs) in jobs.into_iter().zip(outputs) {
            let reply = match (&failure, outs.into_iter().collect::<Option<Vec<_>>>()) {
                (None, Some(outs)) => Ok(outs),
                (Some(why), _) => Err(why.clone()),
                (None, None) => Err("a row was not run".to_string()),
            };
            // The client may have gone: nothing to do then.
            let _ = job.reply.send(reply);
        }
    }

    /// One padded forward pass over `rows`: each row's pooled embedding and the head outputs it
    /// asked for.
    fn forward(&self, rows: &[&Row]) -> Result<Vec<RowOutput>> {
        let started = Instant::now();
        let masks: Vec<Vec<u32>> = rows.iter().map(|r| vec![1; r.input_ids.len()]).collect();
        let batch = pad_rows(
            rows.iter().zip(&masks).map(|(r, m)| {
                (
                    r.input_ids.as_slice(),
                    r.token_type_ids.as_slice(),
                    m.as_slice(),
                )
            }),
            self.pad,
            Padding::default(),
        );
        let input = BertInput::from_rows(
            &batch.input_ids,
            &batch.token_type_ids,
            &batch.attention_mask,
            &self.device,
        );
        let mask = input
            .attention_mask
            .clone()
            .context("BertInput::from_rows sets the mask")?;
        let forwarded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.model.forward(input, false)
        }))
        .map_err(|_| anyhow::anyhow!("the forward pass panicked"))?;
        let hidden = forwarded.bert.last_hidden_state;
        let pooled = match self.pooling {
            Pooling::Mean => bert_model::masked_mean(hidden, mask),
            Pooling::Cls => {
                let [n, _, width] = hidden.dims();
                hidden.slice([0..n, 0..1, 0..width]).reshape([n, width])
            }
        };
        let embeddings = host_rows(pooled)?;
        let mut outputs: Vec<RowOutput> = embeddings
            .into_iter()
            .map(|embedding| RowOutput {
                embedding,
                ..RowOutput::default()
            })
            .collect();
        let [n, seq] = [batch.len(), batch.seq_len];
        for (name, head) in forwarded.heads {
            match (name, head) {
                ("seqcls_logits", HeadOutput::Rank2(t)) => {
                    for (out, row) in outputs.iter_mut().zip(host_rows(t)?) {
                        out.logits = Some(row);
                    }
                }
                ("qa_start_logits" | "qa_end_logits", HeadOutput::Rank2(t)) => {
                    let start = name == "qa_start_logits";
                    for ((out, values), row) in outputs.iter_mut().zip(host_rows(t)?).zip(rows) {
                        let values = values[..row.input_ids.len().min(values.len())].to_vec();
                        let pair = out.span_logits.get_or_insert_with(Default::default);
                        if start {
                            pair.0 = values;
                        } else {
                            pair.1 = values;
                        }
                    }
                }
                ("tokcls_logits" | "mlm_logits", HeadOutput::Rank3(t)) => {
                    self.token_outputs(&mut outputs, rows, t, [n, seq])?;
                }
                _ => {}
            }
        }
        self.metrics.observe_batch(
            rows.len(),
            rows.iter().map(|r| r.input_ids.len()).sum(),
            started.elapsed(),
        );
        Ok(outputs)
    }

    /// One packed forward pass of an encoder over `rows` (no padding): each row's pooled
    /// embedding.
    fn forward_packed(&self, model: &BertModel<B>, rows: &[&Row]) -> Result<Vec<RowOutput>> {
        let started = Instant::now();
        let pairs: Vec<(&[u32], &[u32])> = rows
            .iter()
            .map(|r| (r.input_ids.as_slice(), r.token_type_ids.as_slice()))
            .collect();
        let input = PackedInput::<B>::from_rows(&pairs, &self.device);
        let lengths = input.lengths.clone();
        let hidden = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            model.forward_packed(input).last_hidden_state
        }))
        .map_err(|_| anyhow::anyhow!("the forward pass panicked"))?;
        let pooled = match self.pooling {
            Pooling::Mean => packed_mean(hidden, &lengths),
            Pooling::Cls => packed_first(hidden, &lengths),
        };
        let outputs = host_rows(pooled)?
            .into_iter()
            .map(|embedding| RowOutput {
                embedding,
                ..RowOutput::default()
            })
            .collect();
        self.metrics
            .observe_batch(rows.len(), lengths.iter().sum(), started.elapsed());
        Ok(outputs)
    }

    /// Reads the per-token logits `[n, seq, width]` at each row's wanted positions: selected
    /// on the device, so an MLM sends only the masked positions' vocabulary rows.
    fn token_outputs(
        &self,
        outputs: &mut [RowOutput],
        rows: &[&Row],
        logits: Tensor<B, 3>,
        [n, seq]: [usize; 2],
    ) -> Result<()> {
        let wanted: Vec<Vec<usize>> = rows
            .iter()
            .map(|r| r.token_logits.positions(r.input_ids.len()))
            .collect();
        let flat: Vec<i64> = wanted
            .iter()
            .enumerate()
            .flat_map(|(r, at)| at.iter().map(move |&p| (r * seq + p) as i64))
            .collect();
        if flat.is_empty() {
            return Ok(());
        }
        let width = logits.dims()[2];
        let count = flat.len();
        let index = Tensor::<B, 1, Int>::from_data(TensorData::new(flat, [count]), &self.device);
        let picked = host_rows(logits.reshape([n * seq, width]).select(0, index))?;
        let mut picked = picked.into_iter();
        for (out, at) in outputs.iter_mut().zip(&wanted) {
            out.token_logits = picked.by_ref().take(at.len()).collect();
        }
        Ok(())
    }
}

/// Splits rows into packed forward passes of at most `max_batch_tokens` tokens each (a row
/// longer than that runs alone).
fn packs(lengths: &[usize], max_batch_tokens: usize) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut tokens) = (0, 0);
    for (i, &len) in lengths.iter().enumerate() {
        if i > start && tokens + len > max_batch_tokens {
            out.push(start..i);
            (start, tokens) = (i, 0);
        }
        tokens += len;
    }
    if start < lengths.len() {
        out.push(start..lengths.len());
    }
    out
}

/// Rows one forward pass takes at most when splitting (bounds the search in [`passes`]).
const MAX_PASS_ROWS: usize = 256;

/// Splits rows sorted longest first (`lengths`) into forward passes: a pass pads its rows to
/// its first (longest) one and costs `rows × that length` padded tokens plus `pass_cost` for
/// running a pass at all; returns the split of least total cost (dynamic programming over the
/// sorted rows) whose passes stay within `max_batch_tokens` padded tokens. Rows of very
/// different lengths thus go in different passes instead of all padding to the longest.
fn passes(lengths: &[usize], max_batch_tokens: usize, pass_cost: usize) -> Vec<Range<usize>> {
    let n = lengths.len();
    // best[i]: the least cost of rows i.., its first pass ending at end[i].
    let mut best = vec![0usize; n + 1];
    let mut end = vec![n; n + 1];
    for i in (0..n).rev() {
        let longest = lengths[i].max(1);
        let fit = (max_batch_tokens / longest).clamp(1, MAX_PASS_ROWS);
        best[i] = usize::MAX;
        for j in i + 1..=(i + fit).min(n) {
            let cost = ((j - i) * longest + pass_cost).saturating_add(best[j]);
            if cost <= best[i] {
                best[i] = cost;
                end[i] = j;
            }
        }
    }
    let mut out = Vec::new();
    let mut i = 0;
    while i < n {
        out.push(i..end[i]);
        i = end[i];
    }
    out
}

/// The rows of a `[n, width]` tensor, on the host.
fn host_rows<B: Backend>(t: Tensor<B, 2>) -> Result<Vec<Vec<f32>>> {
    let [_, width] = t.dims();
    let values: Vec<f32> = t
        .into_data()
        .convert::<f32>()
        .to_vec()
        .map_err(|e| anyhow::anyhow!("cannot read the model's output: {e:?}"))?;
    Ok(values.chunks(width.max(1)).map(<[f32]>::to_vec).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every row in exactly one pass, in order, each pass within the token budget.
    fn check(lengths: &[usize], budget: usize, split: &[Range<usize>]) {
        let mut next = 0;
        for pass in split {
            assert_eq!(pass.start, next, "{split:?}");
            assert!(pass.end > pass.start, "{split:?}");
            let padded = pass.len() * lengths[pass.start];
            assert!(padded <= budget || pass.len() == 1, "{split:?}");
            next = pass.end;
        }
        assert_eq!(next, lengths.len());
    }

    #[test]
    fn rows_of_very_different_lengths_run_apart() {
        // One long row and many short ones: padding them all to 128 costs 32 × 128; the long
        // row alone and the short ones together cost 128 + 31 × 10 plus one more pass.
        let mut lengths = vec![128];
        lengths.extend(std::iter::repeat_n(10, 31));
        let split = passes(&lengths, 16384, 64);
        check(&lengths, 16384, &split);
        assert_eq!(split, vec![0..1, 1..32]);
        // Similar lengths stay in one pass.
        let lengths: Vec<usize> = (0..32).map(|i| 40 - i / 8).collect();
        assert_eq!(passes(&lengths, 16384, 64), vec![0..32]);
        // A pass costs nothing: each length runs alone, equal lengths together.
        assert_eq!(passes(&[5, 5, 3, 3, 1], 16384, 0).len(), 3);
    }

    #[test]
    fn packs_fill_the_token_budget() {
        assert_eq!(packs(&[10, 20, 30, 40], 60), vec![0..3, 3..4]);
        assert_eq!(packs(&[100, 10], 60), vec![0..1, 1..2]);
        assert!(packs(&[], 60).is_empty());
    }

    #[test]
    fn passes_stay_within_the_token_budget() {
        let lengths = vec![100; 10];
        let split = passes(&lengths, 300, 64);
        check(&lengths, 300, &split);
        assert_eq!(split.len(), 4);
        // A row longer than the budget still runs, alone.
        let split = passes(&[500, 20, 20], 300, 64);
        check(&[500, 20, 20], 300, &split);
        assert_eq!(split[0], 0..1);
        assert!(passes(&[], 300, 64).is_empty());
    }
}
