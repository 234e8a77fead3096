//! Extractive question answering (SQuAD v1.1 JSON): `[CLS] question [SEP] context window [SEP]`
//! windows with a doc stride, start/end cross-entropy (windows without the answer point at
//! `[CLS]`), answers chosen over all windows of a question, scored with the official SQuAD
//! exact match and F1.

use std::path::Path;

use anyhow::{Context, Result};
use bert_data::BertTokenizer;
use bert_data::tasks::qa::{
    QaExample, QaFeature, best_spans, encode_example, read_squad, span_text,
};
use bert_model::{BertConfig, BertForQuestionAnswering};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Device, Tensor};

use super::{BatchLoss, PredictLine, PredictOptions, Setup, first, host, input_of, targets};
use crate::metrics;

/// A question's windows (`tokenizer` cuts the context with its doc stride).
pub(crate) fn question_windows(
    tokenizer: &BertTokenizer,
    question: &str,
    context: &str,
) -> Result<Vec<QaFeature>, bert_data::DataError> {
    let example = QaExample {
        id: String::new(),
        title: String::new(),
        question: question.to_string(),
        context: context.to_string(),
        answers: Vec::new(),
        is_impossible: true,
    };
    encode_example(tokenizer, &example, 0)
}

fn features(
    path: &Path,
    examples: &[QaExample],
    tokenizer: &BertTokenizer,
) -> Result<Vec<QaFeature>> {
    let mut out = Vec::new();
    for (i, e) in examples.iter().enumerate() {
        out.extend(
            encode_example(tokenizer, e, i)
                .with_context(|| format!("{}: question {}", path.display(), e.id))?,
        );
    }
    Ok(out)
}

fn windows(setup: &Setup) -> Result<BertTokenizer> {
    let task = &setup.config.task;
    Ok(setup
        .tokenizer
        .with_windows(task.max_length(), task.doc_stride)?)
}

/// `(start, end)` logits, `[rows, seq]` each.
fn forward<B: Backend>(
    model: &BertForQuestionAnswering<B>,
    rows: &[&QaFeature],
    pad: u32,
    device: &Device<B>,
) -> Result<(Tensor<B, 2>, Tensor<B, 2>, usize)> {
    let (input, seq_len) = input_of(
        &model.bert,
        rows.iter().map(|r| {
            (
                r.encoding.input_ids.as_slice(),
                r.encoding.token_type_ids.as_slice(),
            )
        }),
        pad,
        device,
    )?;
    let (s, e, _) = model.forward(input, false);
    Ok((s, e, seq_len))
}

/// Padding must never be picked: its logits are pushed far down before the softmax.
fn mask_padding<B: Backend>(
    logits: Tensor<B, 2>,
    rows: &[&QaFeature],
    device: &Device<B>,
) -> Tensor<B, 2> {
    let [b, t] = logits.dims();
    let mut bias = vec![0f32; b * t];
    for (r, row) in rows.iter().enumerate() {
        for v in &mut bias[r * t + row.encoding.len()..(r + 1) * t] {
            *v = -1e4;
        }
    }
    let bias = Tensor::<B, 2>::from_data(burn::tensor::TensorData::new(bias, [b, t]), device);
    let dtype = logits.dtype();
    logits + bias.cast(dtype)
}

/// The best answer of a question over its windows.
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    text: String,
    /// Start + end logit (what is compared across windows, as transformers' run_qa).
    score: f32,
    /// Softmax probability of the span within its window.
    probability: f32,
    /// Character offsets in the context.
    start: usize,
    end: usize,
}

fn log_sum_exp(v: &[f32]) -> f32 {
    let m = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    m + v.iter().map(|x| (x - m).exp()).sum::<f32>().ln()
}

/// Per-question best answers over its windows, best first: at most `k`, one per character
/// span (a span seen in two overlapping windows counts once, with its better score).
fn answers<B: Backend>(
    model: &BertForQuestionAnswering<B>,
    examples: &[QaExample],
    feats: &[QaFeature],
    setup_task: (usize, usize, usize),
    k: usize,
    pad: u32,
    device: &Device<B>,
) -> Result<Vec<Vec<Answer>>> {
    let (batch_size, n_best, max_answer_length) = setup_task;
    let mut found: Vec<Vec<Answer>> = vec![Vec::new(); examples.len()];
    for chunk in feats.chunks(batch_size.max(1)) {
        let refs: Vec<&QaFeature> = chunk.iter().collect();
        let (s, e, t) = forward(model, &refs, pad, device)?;
        let (s, e) = (host(s)?, host(e)?);
        for (r, f) in chunk.iter().enumerate() {
            let n = f.encoding.len();
            let context = &examples[f.example_index].context;
            add_window_answers(
                &mut found[f.example_index],
                f,
                context,
                (&s[r * t..r * t + n], &e[r * t..r * t + n]),
                (n_best, max_answer_length, k),
            );
        }
    }
    for list in &mut found {
        best_answers(list, k);
    }
    Ok(found)
}

/// Adds the best `k` spans of one window (its `(start, end)` logits over its real tokens) to
/// its question's `list`; a span already there keeps the better score.
pub(crate) fn add_window_answers(
    list: &mut Vec<Answer>,
    window: &QaFeature,
    context: &str,
    (start_logits, end_logits): (&[f32], &[f32]),
    (n_best, max_answer_length, k): (usize, usize, usize),
) {
    let norm = log_sum_exp(start_logits) + log_sum_exp(end_logits);
    let offsets = &window.context_offsets;
    for (score, a, b) in best_spans(
        start_logits,
        end_logits,
        offsets,
        n_best,
        max_answer_length,
        k,
    ) {
        let candidate = Answer {
            text: span_text(context, offsets, a, b).unwrap_or_default(),
            score,
            probability: (score - norm).exp(),
            start: offsets[a].map_or(0, |o| o.0),
            end: offsets[b].map_or(0, |o| o.1),
        };
        match list
            .iter_mut()
            .find(|x| (x.start, x.end) == (candidate.start, candidate.end))
        {
            Some(same) if candidate.score > same.score => *same = candidate,
            Some(_) => {}
            None => list.push(candidate),
        }
    }
}

/// Keeps a question's best `k` answers, best first.
pub(crate) fn best_answers(list: &mut Vec<Answer>, k: usize) {
    list.sort_by(|a, b| b.score.total_cmp(&a.score));
    list.truncate(k);
}

/// `{"answer", "start", "end", "score"}` of a question's best answer (empty when none), with
/// `"top_k"` listing every answer in `list` when `top_k > 1`.
pub(crate) fn answer_json(list: &[Answer], top_k: usize) -> serde_json::Value {
    let json = |a: &Answer| serde_json::json!({"answer": a.text, "start": a.start, "end": a.end, "score": a.probability});
    let mut value = match list.first() {
        Some(a) => json(a),
        None => serde_json::json!({"answer": "", "start": null, "end": null, "score": 0.0}),
    };
    if top_k > 1 {
        value["top_k"] = list.iter().map(json).collect();
    }
    value
}

fn evaluate<B: Backend>(
    model: &BertForQuestionAnswering<B>,
    examples: &[QaExample],
    feats: &[QaFeature],
    setup: &Setup,
    device: &Device<B>,
) -> Result<serde_json::Value> {
    let task = &setup.config.task;
    let found = answers(
        model,
        examples,
        feats,
        (
            setup.config.training.batch_size,
            task.n_best,
            task.max_answer_length,
        ),
        1,
        setup.pad(),
        device,
    )?;
    let predictions: Vec<String> = found
        .into_iter()
        .map(|a| a.into_iter().next().map(|x| x.text).unwrap_or_default())
        .collect();
    let golds: Vec<Vec<String>> = examples
        .iter()
        .map(|e| e.answers.iter().map(|a| a.0.clone()).collect())
        .collect();
    let (em, f1) = metrics::squad_scores(&predictions, &golds);
    Ok(serde_json::json!({
        "exact_match": em,
        "f1": f1,
        "examples": examples.len(),
        "features": feats.len(),
    }))
}

fn head_config(base: &BertConfig) -> BertConfig {
    let mut c = base.clone();
    c.architectures = vec![bert_model::Architecture::QuestionAnswering.name().into()];
    c
}

fn read(
    setup: &Setup,
    path: &Path,
    limit: Option<usize>,
) -> Result<(Vec<QaExample>, Vec<QaFeature>)> {
    let examples = first(read_squad(path)?, limit);
    let feats = features(path, &examples, &windows(setup)?)?;
    Ok((examples, feats))
}

/// Fine-tunes.
pub(crate) fn train<B: AutodiffBackend>(setup: &Setup, device: &Device<B>) -> Result<()> {
    let task = &setup.config.task;
    let (_, train_features) = read(setup, &task.train_file, task.max_train_examples)?;
    let (valid_examples, valid_features) = read(setup, &task.valid_file, task.max_valid_examples)?;
    eprintln!(
        "question answering: {} training windows, {} dev windows of {} questions",
        train_features.len(),
        valid_features.len(),
        valid_examples.len()
    );
    let config = head_config(&setup.bert_config);
    let model: BertForQuestionAnswering<B> = super::init_model(setup, &config, device)?;
    let pad = setup.pad();
    super::fit(
        setup,
        model,
        &config,
        &train_features
            .iter()
            .map(|r| r.encoding.len())
            .collect::<Vec<_>>(),
        "f1",
        |model, idx, device| {
            let rows: Vec<&QaFeature> = idx.iter().map(|&i| &train_features[i]).collect();
            let (s, e, _) = forward(model, &rows, pad, device)?;
            let starts = targets(
                rows.iter().map(|r| r.start_position as i64).collect(),
                device,
            );
            let ends = targets(rows.iter().map(|r| r.end_position as i64).collect(), device);
            let s = mask_padding(s, &rows, device);
            let e = mask_padding(e, &rows, device);
            let loss = (bert_model::loss::cross_entropy(s, starts)
                + bert_model::loss::cross_entropy(e, ends))
                / 2.0;
            Ok(BatchLoss {
                loss,
                tokens: rows.iter().map(|r| r.encoding.len()).sum(),
            })
        },
        |model| evaluate(model, &valid_examples, &valid_features, setup, device),
        device,
    )
}

/// `bert evaluate` of a fine-tuned directory.
pub(crate) fn evaluate_dir<B: Backend>(
    setup: &Setup,
    dir: &Path,
    device: &Device<B>,
) -> Result<serde_json::Value> {
    let (model, _) = super::load_head::<B, BertForQuestionAnswering<B>>(dir, device)?;
    let task = &setup.config.task;
    let (examples, feats) = read(setup, &task.valid_file, task.max_valid_examples)?;
    evaluate(&model, &examples, &feats, setup, device)
}

/// `bert predict`: `{"answer", "start", "end", "score"}` (character offsets into the context;
/// score = probability of the span within its window).
pub(crate) fn predict<B: Backend>(
    dir: &Path,
    tokenizer: &BertTokenizer,
    lines: &[PredictLine],
    args: &PredictOptions,
    device: &Device<B>,
) -> Result<Vec<serde_json::Value>> {
    let (model, _) = super::load_head::<B, BertForQuestionAnswering<B>>(dir, device)?;
    let pad = tokenizer.special_tokens().pad;
    let mut examples = Vec::new();
    for l in lines {
        examples.push(QaExample {
            id: l.line.to_string(),
            title: String::new(),
            question: super::field(&args.input, l, "question")?.to_string(),
            context: super::field(&args.input, l, "context")?.to_string(),
            answers: Vec::new(),
            is_impossible: true,
        });
    }
    let feats = features(&args.input, &examples, tokenizer)?;
    let found = answers(
        &model,
        &examples,
        &feats,
        (
            args.batch_size,
            args.n_best.max(1),
            args.max_answer_length.max(1),
        ),
        args.top_k.max(1),
        pad,
        device,
    )?;
    Ok(found
        .iter()
        .map(|list| answer_json(list, args.top_k))
        .collect())
}
