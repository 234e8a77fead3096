//! Token classification (NER): one tag per word, CoNLL or JSONL. Each word's tag is learned
//! and predicted on its first word piece; the dev set is scored entity by entity with seqeval's
//! rules.

use std::path::Path;

use anyhow::{Context, Result};
use bert_data::BertTokenizer;
use bert_data::Encoded;
use bert_data::tasks::token_classification::{
    TaggedSentence, TokenClassificationFeature, encode_sentence, read_token_classification,
    tag_set, word_predictions,
};
use bert_model::{BertConfig, BertForTokenClassification};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Device, Int, Tensor, TensorData};

use super::{BatchLoss, PredictLine, PredictOptions, Setup, first, host, input_of, targets};
use crate::metrics;

fn encode_all(
    path: &Path,
    sentences: &[TaggedSentence],
    tags: &[String],
    tokenizer: &BertTokenizer,
) -> Result<Vec<TokenClassificationFeature>> {
    sentences
        .iter()
        .map(|s| encode_sentence(tokenizer, s, tags).with_context(|| path.display().to_string()))
        .collect()
}

/// `[rows, seq, labels]` logits of padded features.
fn forward<B: Backend>(
    model: &BertForTokenClassification<B>,
    rows: &[&TokenClassificationFeature],
    pad: u32,
    device: &Device<B>,
) -> Result<(Tensor<B, 3>, usize)> {
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
    Ok((model.forward(input, false).0, seq_len))
}

fn loss<B: Backend>(
    model: &BertForTokenClassification<B>,
    rows: &[&TokenClassificationFeature],
    pad: u32,
    device: &Device<B>,
) -> Result<Tensor<B, 1>> {
    let (logits, seq_len) = forward(model, rows, pad, device)?;
    let [b, t, c] = logits.dims();
    let mut positions = Vec::new();
    let mut labels = Vec::new();
    for (r, row) in rows.iter().enumerate() {
        for (i, &l) in row.labels.iter().enumerate() {
            if l >= 0 {
                positions.push((r * seq_len + i) as i64);
                labels.push(l);
            }
        }
    }
    if positions.is_empty() {
        return Ok(Tensor::zeros([1], device));
    }
    let n = positions.len();
    let flat = logits.reshape([b * t, c]);
    let picked = flat.select(
        0,
        Tensor::<B, 1, Int>::from_data(TensorData::new(positions, [n]), device),
    );
    Ok(bert_model::loss::cross_entropy(
        picked,
        targets(labels, device),
    ))
}

/// Per word: `(tag id, probability)`, `None` for words cut off by truncation.
pub(crate) type WordTags = Vec<Option<(usize, f32)>>;

/// Per word of `encoding`'s `num_words` words: the best tag and its probability, read from
/// the first piece's `labels` logits (`logits`: `[encoding.len(), labels]`, row-major).
pub(crate) fn tags_of_words(
    encoding: &Encoded,
    logits: &[f32],
    labels: usize,
    num_words: usize,
) -> WordTags {
    let per_token: Vec<(usize, f32)> = logits
        .chunks(labels.max(1))
        .map(|row| {
            let p = super::softmax(row);
            let k = super::argmax(&p);
            (k, p[k])
        })
        .collect();
    word_predictions(encoding, &per_token, num_words)
}

/// Per-word tags of each feature.
fn word_tags<B: Backend>(
    model: &BertForTokenClassification<B>,
    features: &[TokenClassificationFeature],
    num_words: &[usize],
    batch_size: usize,
    pad: u32,
    device: &Device<B>,
) -> Result<Vec<WordTags>> {
    let mut out = Vec::new();
    for (chunk, words) in features
        .chunks(batch_size.max(1))
        .zip(num_words.chunks(batch_size.max(1)))
    {
        let refs: Vec<&TokenClassificationFeature> = chunk.iter().collect();
        let (logits, seq_len) = forward(model, &refs, pad, device)?;
        let c = logits.dims()[2];
        let v = host(logits)?;
        for (r, (f, &n)) in chunk.iter().zip(words).enumerate() {
            let start = r * seq_len * c;
            let logits = &v[start..start + f.encoding.len() * c];
            out.push(tags_of_words(&f.encoding, logits, c, n));
        }
    }
    Ok(out)
}

/// Entity precision/recall/F1 (micro, seqeval), per-type F1 and word accuracy.
fn evaluate<B: Backend>(
    model: &BertForTokenClassification<B>,
    sentences: &[TaggedSentence],
    features: &[TokenClassificationFeature],
    tags: &[String],
    batch_size: usize,
    pad: u32,
    device: &Device<B>,
) -> Result<serde_json::Value> {
    let words: Vec<usize> = sentences.iter().map(|s| s.tokens.len()).collect();
    let predicted = word_tags(model, features, &words, batch_size, pad, device)?;
    let outside = tags
        .iter()
        .find(|t| t.as_str() == "O")
        .cloned()
        .unwrap_or_else(|| "O".into());
    let pred: Vec<Vec<String>> = predicted
        .iter()
        .map(|ws| {
            ws.iter()
                .map(|w| w.map_or(outside.clone(), |(k, _)| tags[k].clone()))
                .collect()
        })
        .collect();
    let gold: Vec<Vec<String>> = sentences.iter().map(|s| s.tags.clone()).collect();
    let scores = metrics::entity_scores(&pred, &gold);
    let (right, all) = pred
        .iter()
        .zip(&gold)
        .flat_map(|(p, g)| p.iter().zip(g))
        .fold((0usize, 0usize), |(r, a), (p, g)| {
            (r + usize::from(p == g), a + 1)
        });
    Ok(serde_json::json!({
        "precision": scores.precision,
        "recall": scores.recall,
        "f1": scores.f1,
        "accuracy": right as f64 / all.max(1) as f64,
        "per_type_f1": scores.per_type.into_iter().collect::<std::collections::BTreeMap<_, _>>(),
        "examples": sentences.len(),
    }))
}

fn read(
    path: &Path,
    tags: &[String],
    tokenizer: &BertTokenizer,
    limit: Option<usize>,
) -> Result<(Vec<TaggedSentence>, Vec<TokenClassificationFeature>)> {
    let sentences = first(read_token_classification(path)?, limit);
    let features = encode_all(path, &sentences, tags, tokenizer)?;
    Ok((sentences, features))
}

fn head_config(base: &BertConfig, tags: &[String]) -> BertConfig {
    let mut c = base.clone().with_labels(tags);
    c.architectures = vec![bert_model::Architecture::TokenClassification.name().into()];
    c
}

/// Fine-tunes.
pub(crate) fn train<B: AutodiffBackend>(setup: &Setup, device: &Device<B>) -> Result<()> {
    let task = &setup.config.task;
    let train_sentences = first(
        read_token_classification(&task.train_file)?,
        task.max_train_examples,
    );
    let tags = task
        .labels
        .clone()
        .unwrap_or_else(|| tag_set(&train_sentences));
    let tokenizer = &setup.truncating;
    let train_features = encode_all(&task.train_file, &train_sentences, &tags, tokenizer)?;
    let (valid_sentences, valid_features) =
        read(&task.valid_file, &tags, tokenizer, task.max_valid_examples)?;
    let config = head_config(&setup.bert_config, &tags);
    let model: BertForTokenClassification<B> = super::init_model(setup, &config, device)?;
    let pad = setup.pad();
    let batch_size = setup.config.training.batch_size;
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
            let rows: Vec<&TokenClassificationFeature> =
                idx.iter().map(|&i| &train_features[i]).collect();
            Ok(BatchLoss {
                loss: loss(model, &rows, pad, device)?,
                tokens: rows.iter().map(|r| r.encoding.len()).sum(),
            })
        },
        |model| {
            evaluate(
                model,
                &valid_sentences,
                &valid_features,
                &tags,
                batch_size,
                pad,
                device,
            )
        },
        device,
    )
}

/// `bert evaluate` of a fine-tuned directory.
pub(crate) fn evaluate_dir<B: Backend>(
    setup: &Setup,
    dir: &Path,
    device: &Device<B>,
) -> Result<serde_json::Value> {
    let (model, config) = super::load_head::<B, BertForTokenClassification<B>>(dir, device)?;
    let tags = config.labels();
    let task = &setup.config.task;
    let (sentences, features) = read(
        &task.valid_file,
        &tags,
        &setup.truncating,
        task.max_valid_examples,
    )?;
    evaluate(
        &model,
        &sentences,
        &features,
        &tags,
        setup.config.training.batch_size,
        setup.pad(),
        device,
    )
}

/// The character span of each word of a text's `encoding` (its word ids and offsets).
pub(crate) fn word_spans(encoding: &Encoded) -> Vec<(usize, usize)> {
    let mut spans: Vec<(usize, usize)> = Vec::new();
    for (w, off) in encoding.word_ids.iter().zip(&encoding.offsets) {
        if let Some(w) = w {
            let w = *w as usize;
            if w >= spans.len() {
                spans.resize(w + 1, (usize::MAX, 0));
            }
            spans[w].0 = spans[w].0.min(off.0);
            spans[w].1 = spans[w].1.max(off.1);
        }
    }
    spans
}

/// The words a prediction names its entities by.
pub(crate) enum Words<'a> {
    /// Raw text and each word's character span in it: entities get `start`/`end` characters.
    Text(&'a str, &'a [(usize, usize)]),
    /// Pre-split words: entities get `start_word`/`end_word` (inclusive).
    Tokens(&'a [&'a str]),
}

/// `{"entities": [{"entity", "score", "text", spans}], "tags": [every word's tag]}`: the
/// entities (seqeval's IOB rules) of one input's word tags; an entity's score is the mean
/// probability of its words.
pub(crate) fn entities_json(
    tags: &[String],
    predicted: &WordTags,
    words: &Words,
) -> serde_json::Value {
    let names: Vec<&str> = predicted
        .iter()
        .map(|w| w.map_or("O", |(k, _)| tags.get(k).map_or("O", String::as_str)))
        .collect();
    let mut entities = Vec::new();
    for (kind, a, b) in metrics::entities(&names) {
        let score = (a..=b)
            .filter_map(|i| predicted[i].map(|(_, p)| p))
            .sum::<f32>()
            / (b - a + 1) as f32;
        let mut e = serde_json::json!({"entity": kind, "score": score});
        match words {
            Words::Text(text, spans) => {
                let (start, end) = (spans[a].0, spans[b].1);
                e["start"] = start.into();
                e["end"] = end.into();
                e["text"] = text
                    .chars()
                    .skip(start)
                    .take(end.saturating_sub(start))
                    .collect::<String>()
                    .into();
            }
            Words::Tokens(tokens) => {
                e["start_word"] = a.into();
                e["end_word"] = b.into();
                e["text"] = tokens[a..=b].join(" ").into();
            }
        }
        entities.push(e);
    }
    serde_json::json!({"entities": entities, "tags": names})
}

/// A predict line's words: pre-split, or a text's word character spans.
enum Line<'a> {
    Tokens(Vec<&'a str>),
    Text(Vec<(usize, usize)>),
}

/// `bert predict`: [`entities_json`] of each line, with character spans for `{"text"}` lines
/// and word spans for `{"tokens"}` lines.
pub(crate) fn predict<B: Backend>(
    dir: &Path,
    tokenizer: &BertTokenizer,
    lines: &[PredictLine],
    args: &PredictOptions,
    device: &Device<B>,
) -> Result<Vec<serde_json::Value>> {
    let (model, config) = super::load_head::<B, BertForTokenClassification<B>>(dir, device)?;
    let tags = config.labels();
    let pad = tokenizer.special_tokens().pad;
    let mut out = Vec::new();
    for chunk in lines.chunks(args.batch_size.max(1)) {
        let mut features = Vec::new();
        let mut words = Vec::new();
        let mut inputs: Vec<Line> = Vec::new();
        for l in chunk {
            let at = || format!("{}:{}", args.input.display(), l.line);
            if let Some(tokens) = l.value["tokens"].as_array() {
                let tokens: Vec<&str> = tokens
                    .iter()
                    .map(|t| {
                        t.as_str()
                            .with_context(|| format!("{}: tokens must be strings", at()))
                    })
                    .collect::<Result<_>>()?;
                let encoding = tokenizer.encode_words(&tokens).with_context(at)?;
                words.push(tokens.len());
                features.push(TokenClassificationFeature {
                    labels: vec![-100; encoding.len()],
                    encoding,
                });
                inputs.push(Line::Tokens(tokens));
            } else {
                let text = super::field(&args.input, l, "text")?;
                let encoding = tokenizer.encode(text, None).with_context(at)?;
                let spans = word_spans(&encoding);
                words.push(spans.len());
                features.push(TokenClassificationFeature {
                    labels: vec![-100; encoding.len()],
                    encoding,
                });
                inputs.push(Line::Text(spans));
            }
        }
        let predicted = word_tags(&model, &features, &words, args.batch_size, pad, device)?;
        for ((l, word_preds), input) in chunk.iter().zip(&predicted).zip(&inputs) {
            let words = match input {
                Line::Tokens(tokens) => Words::Tokens(tokens),
                Line::Text(spans) => Words::Text(l.value["text"].as_str().unwrap_or(""), spans),
            };
            out.push(entities_json(&tags, word_preds, &words));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    type B = Flex;

    /// The loss equals cross-entropy computed on the host from the full logits at the
    /// labelled (first-piece) positions of each row.
    #[test]
    fn loss_is_cross_entropy_at_first_pieces() {
        let device = Default::default();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/tiny-bert/BertForMaskedLM");
        let tokenizer = BertTokenizer::from_dir(&dir).expect("tokenizer");
        let tags: Vec<String> = ["O", "B-PER"].iter().map(|s| s.to_string()).collect();
        let sentences = [
            vec![("w5", "B-PER"), ("w50", "O"), ("w6", "B-PER")],
            vec![("w51", "O"), ("w7", "B-PER")],
        ]
        .map(|s| TaggedSentence {
            tokens: s.iter().map(|x| x.0.to_string()).collect(),
            tags: s.iter().map(|x| x.1.to_string()).collect(),
            line: 1,
        });
        let features = encode_all(Path::new("x"), &sentences, &tags, &tokenizer).expect("encode");
        let mut config = bert_model::checkpoint::load_config(&dir).expect("config");
        config = config.with_labels(&tags);
        let model = BertForTokenClassification::<B>::new(&config, &device);
        let model = burn::module::Module::no_grad(model);
        let rows: Vec<&TokenClassificationFeature> = features.iter().collect();
        let got = f64::from(loss(&model, &rows, 0, &device).expect("loss").into_scalar());
        let (logits, t) = forward(&model, &rows, 0, &device).expect("forward");
        let v = host(logits).expect("host");
        let mut total = 0.0;
        let mut n = 0.0;
        for (r, f) in features.iter().enumerate() {
            for (i, &l) in f.labels.iter().enumerate() {
                if l >= 0 {
                    let row = &v[(r * t + i) * 2..(r * t + i) * 2 + 2];
                    let p = super::super::softmax(row);
                    total -= f64::from(p[l as usize].ln());
                    n += 1.0;
                }
            }
        }
        assert_eq!(n, 5.0);
        assert!((got - total / n).abs() < 1e-5, "{got} vs {}", total / n);
        assert_eq!(features[0].labels, vec![-100, 1, 0, 1, -100]);
    }
}
