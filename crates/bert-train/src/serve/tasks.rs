//! The routes of the heads text-embeddings-inference does not serve, answered as `bert
//! predict` and `bert fill-mask` answer (their post-processing is shared): `/ner`, `/qa`,
//! `/fill-mask`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use bert_model::Architecture;
use serde_json::{Value, json};

use super::api::{
    Answer, ApiError, Shared, batch_of, encodings, flag, internal, needs, parse, run, texts,
};
use super::engine::{Row, TokenLogits};
use crate::commands::fill_mask::{mask_positions, top_candidates};
use crate::finetune::qa::{add_window_answers, answer_json, best_answers, question_windows};
use crate::finetune::token::{Words, entities_json, tags_of_words, word_spans};

/// Start and end positions considered per window (`bert predict --n-best`).
const N_BEST: usize = 20;
/// Longest answer in tokens, unless the request sets `max_answer_len`
/// (`bert predict --max-answer-length`).
const MAX_ANSWER_LENGTH: usize = 30;

/// A positive integer field, `default` when absent.
fn count(request: &Value, name: &str, default: usize) -> Result<usize, ApiError> {
    match &request[name] {
        Value::Null => Ok(default),
        v => v
            .as_u64()
            .filter(|&n| n > 0)
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| ApiError::validation(format!("{name}: expected a positive integer"))),
    }
}

/// One answer for a request that sent one input, else the list.
fn one_or_all(single: bool, answers: Vec<Value>) -> Value {
    if single {
        answers.into_iter().next().unwrap_or(Value::Null)
    } else {
        json!(answers)
    }
}

/// `POST /ner`: `{"inputs": text | [texts], "truncate": false}` → per text `{"entities":
/// [{"entity", "score", "start", "end", "text"}], "tags": [every word's tag]}` (character
/// spans), as `bert predict` writes it; one text answers one object.
pub(super) async fn ner(
    State(shared): State<Arc<Shared>>,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    needs(
        &shared,
        "/ner",
        &[Architecture::TokenClassification],
        "a token-classification model (BertForTokenClassification)",
    )?;
    let request: Value = parse(&shared, body)?;
    let inputs = texts(&request["inputs"], "inputs")?;
    let single = request["inputs"].is_string();
    let truncate = flag(&request, "truncate", false)?;
    let encoded = encodings(
        &shared,
        inputs.iter().map(|t| (t.clone(), None)).collect(),
        truncate,
    )
    .await?;
    let rows = encoded
        .iter()
        .map(|e| Row {
            token_logits: TokenLogits::All,
            ..Row::new(e.input_ids.clone(), e.token_type_ids.clone())
        })
        .collect();
    let outs = run(&shared, rows).await?;
    let tags = shared.labels.as_deref().unwrap_or_default();
    let answers = inputs
        .iter()
        .zip(&encoded)
        .zip(outs)
        .map(|((text, encoding), out)| {
            let spans = word_spans(encoding);
            let width = out.token_logits.first().map_or(0, Vec::len);
            let predicted = tags_of_words(encoding, &out.token_logits.concat(), width, spans.len());
            entities_json(tags, &predicted, &Words::Text(text, &spans))
        })
        .collect();
    Ok(axum::Json(one_or_all(single, answers)))
}

/// `POST /qa`: `{"question": q, "context": c, "top_k": 1, "max_answer_len": 30}` (or lists of
/// questions and contexts, one answer each) → `{"answer", "start", "end", "score"}`: character
/// offsets into the context and the span's probability in its window, over every window of
/// a long context; with `top_k > 1` the best distinct answers also under `"top_k"`.
pub(super) async fn qa(
    State(shared): State<Arc<Shared>>,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    needs(
        &shared,
        "/qa",
        &[Architecture::QuestionAnswering],
        "a question-answering model (BertForQuestionAnswering)",
    )?;
    let request: Value = parse(&shared, body)?;
    let single = request["question"].is_string();
    let questions = texts(&request["question"], "question")?;
    let contexts = texts(&request["context"], "context")?;
    if questions.len() != contexts.len() || single != request["context"].is_string() {
        return Err(ApiError::validation(format!(
            "question and context: {} questions for {} contexts (send one of each, or lists of \
             the same length)",
            questions.len(),
            contexts.len()
        )));
    }
    batch_of(&shared.limits, questions.len())?;
    let top_k = count(&request, "top_k", 1)?;
    let max_answer_length = count(&request, "max_answer_len", MAX_ANSWER_LENGTH)?;
    let windows = {
        let shared = shared.clone();
        let contexts = contexts.clone();
        tokio::task::spawn_blocking(move || {
            questions
                .iter()
                .zip(&contexts)
                .enumerate()
                .map(|(i, (q, c))| {
                    question_windows(&shared.windows, q, c).map_err(|e| {
                        ApiError::new(
                            StatusCode::UNPROCESSABLE_ENTITY,
                            "tokenizer",
                            format!("input {i}: {e}"),
                        )
                    })
                })
                .collect::<Result<Vec<_>, ApiError>>()
        })
        .await
        .map_err(internal)??
    };
    let rows = windows
        .iter()
        .flatten()
        .map(|w| {
            Row::new(
                w.encoding.input_ids.clone(),
                w.encoding.token_type_ids.clone(),
            )
        })
        .collect();
    let mut outs = run(&shared, rows).await?.into_iter();
    let mut answers = Vec::new();
    for (question, context) in windows.iter().zip(&contexts) {
        let mut found = Vec::new();
        for (window, out) in question.iter().zip(outs.by_ref()) {
            let (start, end) = out.span_logits.unwrap_or_default();
            add_window_answers(
                &mut found,
                window,
                context,
                (&start, &end),
                (N_BEST, max_answer_length, top_k),
            );
        }
        best_answers(&mut found, top_k);
        answers.push(answer_json(&found, top_k));
    }
    Ok(axum::Json(one_or_all(single, answers)))
}

/// `POST /fill-mask`: `{"inputs": text | [texts], "top_k": 5, "truncate": false}` → per text,
/// per `[MASK]`, the `top_k` most likely tokens `{"score", "token", "token_str", "sequence"}`
/// best first, as `bert fill-mask --json`; one text answers its list of masks.
pub(super) async fn fill_mask(
    State(shared): State<Arc<Shared>>,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    needs(
        &shared,
        "/fill-mask",
        &[Architecture::MaskedLm, Architecture::PreTraining],
        "a masked-language-model head (BertForMaskedLM or BertForPreTraining)",
    )?;
    let request: Value = parse(&shared, body)?;
    let inputs = texts(&request["inputs"], "inputs")?;
    let single = request["inputs"].is_string();
    let top_k = count(&request, "top_k", 5)?;
    let truncate = flag(&request, "truncate", false)?;
    let encoded = encodings(
        &shared,
        inputs.into_iter().map(|t| (t, None)).collect(),
        truncate,
    )
    .await?;
    let positions = encoded
        .iter()
        .enumerate()
        .map(|(i, e)| {
            mask_positions(&shared.tokenizer, &e.input_ids)
                .map_err(|e| ApiError::validation(format!("input {i}: {e:#}")))
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let rows = encoded
        .iter()
        .zip(&positions)
        .map(|(e, at)| Row {
            token_logits: TokenLogits::At(at.clone()),
            ..Row::new(e.input_ids.clone(), e.token_type_ids.clone())
        })
        .collect();
    let outs = run(&shared, rows).await?;
    let answers = tokio::task::spawn_blocking(move || {
        encoded
            .iter()
            .zip(&positions)
            .zip(outs)
            .map(|((e, at), out)| {
                let masks = at
                    .iter()
                    .zip(&out.token_logits)
                    .map(|(&p, logits)| {
                        top_candidates(&shared.tokenizer, &e.input_ids, p, logits, top_k)
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                Ok(json!(masks))
            })
            .collect::<anyhow::Result<Vec<Value>>>()
    })
    .await
    .map_err(internal)?
    .map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "tokenizer",
            format!("{e:#}"),
        )
    })?;
    Ok(axum::Json(one_or_all(single, answers)))
}
