//! Sequence classification and regression: one label (or score) per text or text pair, read
//! from TSV/CSV/JSONL columns; cross-entropy (or mean squared error) on the pooled output.

use std::path::Path;

use anyhow::{Context, Result};
use bert_data::BertTokenizer;
use bert_data::tasks::classification::{
    ClassificationExample, Columns, LabelSet, Target, read_classification,
};
use bert_model::{BertConfig, BertForSequenceClassification};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Device, Tensor, TensorData};

use super::{BatchLoss, PredictLine, PredictOptions, Setup, first, host, input_of, targets};
use crate::metrics;

/// An encoded example.
struct Row {
    ids: Vec<u32>,
    types: Vec<u32>,
    target: Target,
}

fn columns(setup: &Setup) -> Columns {
    let t = &setup.config.task;
    Columns {
        text: t.text_column.clone(),
        text_pair: t.text_pair_column.clone(),
        label: t.label_column.clone(),
        header: t.header,
    }
}

fn encode(
    path: &Path,
    examples: &[ClassificationExample],
    labels: &LabelSet,
    tokenizer: &BertTokenizer,
) -> Result<Vec<Row>> {
    examples
        .iter()
        .map(|e| {
            let enc = tokenizer
                .encode(&e.text, e.text_pair.as_deref())
                .with_context(|| format!("{}:{}", path.display(), e.line))?;
            Ok(Row {
                ids: enc.input_ids,
                types: enc.token_type_ids,
                target: labels.target(e, path)?,
            })
        })
        .collect()
}

fn read(setup: &Setup, path: &Path, labels: &LabelSet, limit: Option<usize>) -> Result<Vec<Row>> {
    let examples = first(read_classification(path, &columns(setup), true)?, limit);
    encode(path, &examples, labels, &setup.truncating)
}

fn forward<B: Backend>(
    model: &BertForSequenceClassification<B>,
    rows: &[&Row],
    pad: u32,
    device: &Device<B>,
) -> Result<Tensor<B, 2>> {
    let (input, _) = input_of(
        &model.bert,
        rows.iter().map(|r| (r.ids.as_slice(), r.types.as_slice())),
        pad,
        device,
    )?;
    Ok(model.forward(input, false).0)
}

fn loss<B: Backend>(logits: Tensor<B, 2>, rows: &[&Row], device: &Device<B>) -> Tensor<B, 1> {
    let n = rows.len();
    match rows.first().map(|r| r.target) {
        Some(Target::Score(_)) => {
            let y: Vec<f32> = rows.iter().map(|r| score(r.target) as f32).collect();
            let y = Tensor::<B, 1>::from_data(TensorData::new(y, [n]), device);
            (logits.cast(burn::tensor::DType::F32).reshape([n]) - y)
                .powi_scalar(2)
                .mean()
        }
        _ => {
            let y = rows.iter().map(|r| class(r.target) as i64).collect();
            bert_model::loss::cross_entropy(logits, targets(y, device))
        }
    }
}

fn score(t: Target) -> f64 {
    match t {
        Target::Score(s) => f64::from(s),
        Target::Class(c) => c as f64,
    }
}

fn class(t: Target) -> usize {
    match t {
        Target::Class(c) => c,
        Target::Score(s) => s as usize,
    }
}

/// Dev metrics: accuracy, macro-F1, micro-F1 and MCC (+ F1 of class 1 for binary tasks), or
/// Pearson/Spearman/MSE.
fn evaluate<B: Backend>(
    model: &BertForSequenceClassification<B>,
    rows: &[Row],
    labels: &LabelSet,
    batch_size: usize,
    pad: u32,
    device: &Device<B>,
) -> Result<serde_json::Value> {
    let mut outputs: Vec<Vec<f32>> = Vec::new();
    for chunk in rows.chunks(batch_size.max(1)) {
        let refs: Vec<&Row> = chunk.iter().collect();
        let logits = forward(model, &refs, pad, device)?;
        let [n, c] = logits.dims();
        let v = host(logits)?;
        outputs.extend((0..n).map(|i| v[i * c..(i + 1) * c].to_vec()));
    }
    Ok(match labels {
        LabelSet::Regression => {
            let pred: Vec<f64> = outputs.iter().map(|o| f64::from(o[0])).collect();
            let gold: Vec<f64> = rows.iter().map(|r| score(r.target)).collect();
            let mse = pred
                .iter()
                .zip(&gold)
                .map(|(p, g)| (p - g).powi(2))
                .sum::<f64>()
                / gold.len().max(1) as f64;
            serde_json::json!({
                "pearson": metrics::pearson(&pred, &gold),
                "spearman": metrics::spearman(&pred, &gold),
                "mse": mse,
                "examples": gold.len(),
            })
        }
        LabelSet::Classes(names) => {
            let pred: Vec<usize> = outputs.iter().map(|o| super::argmax(o)).collect();
            let gold: Vec<usize> = rows.iter().map(|r| class(r.target)).collect();
            let mut v = serde_json::json!({
                "accuracy": metrics::accuracy(&pred, &gold),
                "f1": metrics::macro_f1(&pred, &gold, names.len()),
                "micro_f1": metrics::micro_f1(&pred, &gold, names.len(), None),
                "matthews": metrics::matthews(&pred, &gold, names.len()),
                "examples": gold.len(),
            });
            if names.len() == 2 {
                v["f1_positive"] = serde_json::json!(metrics::binary_f1(&pred, &gold));
            }
            v
        }
    })
}

fn head_config(base: &BertConfig, labels: &LabelSet) -> BertConfig {
    let mut c = match labels {
        LabelSet::Classes(names) => base.clone().with_labels(names),
        LabelSet::Regression => {
            let mut c = base.clone().with_labels(&["score"]);
            c.problem_type = Some("regression".into());
            c
        }
    };
    c.architectures = vec![
        bert_model::Architecture::SequenceClassification
            .name()
            .into(),
    ];
    c
}

fn label_set(config: &BertConfig) -> LabelSet {
    if config.problem_type.as_deref() == Some("regression") {
        LabelSet::Regression
    } else {
        LabelSet::Classes(config.labels())
    }
}

/// Fine-tunes.
pub(crate) fn train<B: AutodiffBackend>(setup: &Setup, device: &Device<B>) -> Result<()> {
    let task = &setup.config.task;
    let train_examples = first(
        read_classification(&task.train_file, &columns(setup), true)?,
        task.max_train_examples,
    );
    let labels = if task.regression {
        LabelSet::Regression
    } else if let Some(names) = &task.labels {
        LabelSet::Classes(names.clone())
    } else {
        LabelSet::from_examples(&train_examples)
    };
    let tokenizer = &setup.truncating;
    let train_rows = encode(&task.train_file, &train_examples, &labels, tokenizer)?;
    let valid_rows = read(setup, &task.valid_file, &labels, task.max_valid_examples)?;
    let config = head_config(&setup.bert_config, &labels);
    let model: BertForSequenceClassification<B> = super::init_model(setup, &config, device)?;
    let pad = setup.pad();
    let batch_size = setup.config.training.batch_size;
    let main = if task.regression {
        "pearson"
    } else {
        "accuracy"
    };
    super::fit(
        setup,
        model,
        &config,
        &train_rows.iter().map(|r| r.ids.len()).collect::<Vec<_>>(),
        main,
        |model, idx, device| {
            let rows: Vec<&Row> = idx.iter().map(|&i| &train_rows[i]).collect();
            let logits = forward(model, &rows, pad, device)?;
            Ok(BatchLoss {
                loss: loss(logits, &rows, device),
                tokens: rows.iter().map(|r| r.ids.len()).sum(),
            })
        },
        |model| evaluate(model, &valid_rows, &labels, batch_size, pad, device),
        device,
    )
}

/// `bert evaluate` of a fine-tuned directory.
pub(crate) fn evaluate_dir<B: Backend>(
    setup: &Setup,
    dir: &Path,
    device: &Device<B>,
) -> Result<serde_json::Value> {
    let (model, config) = super::load_head::<B, BertForSequenceClassification<B>>(dir, device)?;
    let labels = label_set(&config);
    let task = &setup.config.task;
    let rows = read(setup, &task.valid_file, &labels, task.max_valid_examples)?;
    evaluate(
        &model,
        &rows,
        &labels,
        setup.config.training.batch_size,
        setup.pad(),
        device,
    )
}

/// `bert predict`: `{"label", "score", "scores"}` per line (regression: `{"score"}`).
pub(crate) fn predict<B: Backend>(
    dir: &Path,
    tokenizer: &BertTokenizer,
    lines: &[PredictLine],
    args: &PredictOptions,
    device: &Device<B>,
) -> Result<Vec<serde_json::Value>> {
    let (model, config) = super::load_head::<B, BertForSequenceClassification<B>>(dir, device)?;
    let labels = label_set(&config);
    let pad = tokenizer.special_tokens().pad;
    let mut out = Vec::new();
    for chunk in lines.chunks(args.batch_size.max(1)) {
        let mut rows = Vec::new();
        for l in chunk {
            let text = super::field(&args.input, l, "text")?;
            let pair = l.value["text_pair"].as_str();
            let enc = tokenizer
                .encode(text, pair)
                .with_context(|| format!("{}:{}", args.input.display(), l.line))?;
            rows.push(Row {
                ids: enc.input_ids,
                types: enc.token_type_ids,
                target: Target::Class(0),
            });
        }
        let refs: Vec<&Row> = rows.iter().collect();
        let logits = forward(&model, &refs, pad, device)?;
        let [n, c] = logits.dims();
        let v = host(logits)?;
        for i in 0..n {
            let row = &v[i * c..(i + 1) * c];
            out.push(match &labels {
                LabelSet::Regression => serde_json::json!({"score": row[0]}),
                LabelSet::Classes(names) => {
                    let p = super::softmax(row);
                    let mut order: Vec<usize> = (0..c).collect();
                    order.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
                    let best = order[0];
                    let mut value = serde_json::json!({
                        "label": names[best],
                        "score": p[best],
                        "scores": names.iter().zip(&p).map(|(n, s)| (n.clone(), serde_json::json!(s))).collect::<serde_json::Map<_, _>>(),
                    });
                    if args.top_k > 1 {
                        value["top_k"] = order
                            .iter()
                            .take(args.top_k)
                            .map(|&k| serde_json::json!({"label": names[k], "score": p[k]}))
                            .collect();
                    }
                    value
                }
            });
        }
    }
    Ok(out)
}
