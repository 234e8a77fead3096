//! Multiple choice (COPA XML, CommonsenseQA JSONL, or `{"context", "choices", "label"}`): each
//! choice is the pair (context, choice); one score per pair, softmax over the choices.

use std::path::Path;

use anyhow::{Context, Result, bail};
use bert_data::BertTokenizer;
use bert_data::tasks::multiple_choice::{ChoiceExample, read_multiple_choice};
use bert_model::{BertConfig, BertForMultipleChoice};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Device, Tensor};

use super::{BatchLoss, PredictLine, PredictOptions, Setup, first, host, input_of, targets};
use crate::metrics;

/// The encoded pairs of one example.
struct Row {
    pairs: Vec<(Vec<u32>, Vec<u32>)>,
    label: Option<usize>,
}

fn encode(path: &Path, examples: &[ChoiceExample], tokenizer: &BertTokenizer) -> Result<Vec<Row>> {
    examples
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let pairs = e
                .choices
                .iter()
                .map(|c| {
                    tokenizer
                        .encode(&e.context, Some(c))
                        .map(|enc| (enc.input_ids, enc.token_type_ids))
                        .with_context(|| format!("{}: example {}", path.display(), i + 1))
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(Row {
                pairs,
                label: e.label,
            })
        })
        .collect()
}

/// `[rows, choices]` scores.
fn forward<B: Backend>(
    model: &BertForMultipleChoice<B>,
    rows: &[&Row],
    pad: u32,
    device: &Device<B>,
) -> Result<Tensor<B, 2>> {
    let choices = rows.first().map_or(0, |r| r.pairs.len());
    if rows.iter().any(|r| r.pairs.len() != choices) {
        bail!("every example of a batch needs the same number of choices");
    }
    let (input, _) = input_of(
        &model.bert,
        rows.iter()
            .flat_map(|r| r.pairs.iter().map(|(i, t)| (i.as_slice(), t.as_slice()))),
        pad,
        device,
    )?;
    Ok(model.forward(input, choices))
}

fn evaluate<B: Backend>(
    model: &BertForMultipleChoice<B>,
    rows: &[Row],
    batch_size: usize,
    pad: u32,
    device: &Device<B>,
) -> Result<serde_json::Value> {
    let mut pred = Vec::new();
    for chunk in rows.chunks(batch_size.max(1)) {
        let refs: Vec<&Row> = chunk.iter().collect();
        let scores = forward(model, &refs, pad, device)?;
        let [n, c] = scores.dims();
        let v = host(scores)?;
        pred.extend((0..n).map(|i| super::argmax(&v[i * c..(i + 1) * c])));
    }
    let gold: Vec<usize> = rows.iter().map(|r| r.label.unwrap_or(usize::MAX)).collect();
    Ok(serde_json::json!({
        "accuracy": metrics::accuracy(&pred, &gold),
        "examples": rows.len(),
    }))
}

fn read(setup: &Setup, path: &Path, limit: Option<usize>) -> Result<Vec<Row>> {
    let examples = first(read_multiple_choice(path)?, limit);
    if let Some(i) = examples.iter().position(|e| e.label.is_none()) {
        bail!("{}: example {} has no label", path.display(), i + 1);
    }
    encode(path, &examples, &setup.truncating)
}

fn head_config(base: &BertConfig) -> BertConfig {
    let mut c = base.clone();
    c.architectures = vec![bert_model::Architecture::MultipleChoice.name().into()];
    c
}

/// Fine-tunes.
pub(crate) fn train<B: AutodiffBackend>(setup: &Setup, device: &Device<B>) -> Result<()> {
    let task = &setup.config.task;
    let train_rows = read(setup, &task.train_file, task.max_train_examples)?;
    let valid_rows = read(setup, &task.valid_file, task.max_valid_examples)?;
    let config = head_config(&setup.bert_config);
    let model: BertForMultipleChoice<B> = super::init_model(setup, &config, device)?;
    let pad = setup.pad();
    let batch_size = setup.config.training.batch_size;
    super::fit(
        setup,
        model,
        &config,
        &train_rows
            .iter()
            .map(|r| r.pairs.iter().map(|p| p.0.len()).max().unwrap_or(0))
            .collect::<Vec<_>>(),
        "accuracy",
        |model, idx, device| {
            let rows: Vec<&Row> = idx.iter().map(|&i| &train_rows[i]).collect();
            let scores = forward(model, &rows, pad, device)?;
            let labels = rows.iter().map(|r| r.label.unwrap_or(0) as i64).collect();
            Ok(BatchLoss {
                loss: bert_model::loss::cross_entropy(scores, targets(labels, device)),
                tokens: rows
                    .iter()
                    .flat_map(|r| r.pairs.iter().map(|p| p.0.len()))
                    .sum(),
            })
        },
        |model| evaluate(model, &valid_rows, batch_size, pad, device),
        device,
    )
}

/// `bert evaluate` of a fine-tuned directory.
pub(crate) fn evaluate_dir<B: Backend>(
    setup: &Setup,
    dir: &Path,
    device: &Device<B>,
) -> Result<serde_json::Value> {
    let (model, _) = super::load_head::<B, BertForMultipleChoice<B>>(dir, device)?;
    let task = &setup.config.task;
    let rows = read(setup, &task.valid_file, task.max_valid_examples)?;
    evaluate(
        &model,
        &rows,
        setup.config.training.batch_size,
        setup.pad(),
        device,
    )
}

/// `bert predict`: `{"label", "choice", "score", "scores"}` per `{"context", "choices"}` line.
pub(crate) fn predict<B: Backend>(
    dir: &Path,
    tokenizer: &BertTokenizer,
    lines: &[PredictLine],
    args: &PredictOptions,
    device: &Device<B>,
) -> Result<Vec<serde_json::Value>> {
    let (model, _) = super::load_head::<B, BertForMultipleChoice<B>>(dir, device)?;
    let pad = tokenizer.special_tokens().pad;
    let mut out = Vec::new();
    for l in lines {
        let at = || format!("{}:{}", args.input.display(), l.line);
        let context = super::field(&args.input, l, "context")?;
        let choices: Vec<String> = l.value["choices"]
            .as_array()
            .with_context(|| format!("{}: missing list field \"choices\"", at()))?
            .iter()
            .map(|c| {
                c.as_str()
                    .map(str::to_string)
                    .with_context(|| format!("{}: choices must be strings", at()))
            })
            .collect::<Result<_>>()?;
        if choices.is_empty() {
            bail!("{}: no choices", at());
        }
        let example = ChoiceExample {
            context: context.to_string(),
            choices: choices.clone(),
            label: None,
        };
        let rows = encode(&args.input, &[example], tokenizer)?;
        let refs: Vec<&Row> = rows.iter().collect();
        let scores = host(forward(&model, &refs, pad, device)?)?;
        let p = super::softmax(&scores);
        let best = super::argmax(&p);
        out.push(serde_json::json!({
            "label": best, "choice": choices[best], "score": p[best], "scores": p,
        }));
    }
    Ok(out)
}
