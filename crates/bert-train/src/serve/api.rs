//! The HTTP routes of `bert serve` (JSON in and out), as text-embeddings-inference names them:
//! `/embed`, `/v1/embeddings` (OpenAI), `/predict`, `/rerank`, `/tokenize`, `/health`, `/info`,
//! `/metrics`. Every error is `{"error": …, "error_type": …}` with its status.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bert_data::{BertTokenizer, Encoded};
use bert_model::Architecture;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::engine::{Job, Queue, Row, RowOutput};
use super::metrics::Metrics;

/// What the routes share.
#[allow(missing_debug_implementations)]
pub struct Shared {
    /// The model's queue.
    pub queue: Queue,
    /// The model's tokenizer, without truncation.
    pub tokenizer: BertTokenizer,
    /// The same, truncating to `limits.max_input_length` (longest first).
    pub truncating: BertTokenizer,
    /// Request limits.
    pub limits: Limits,
    /// `GET /info`.
    pub info: Value,
    /// The same, cutting a question answering context into windows with a doc stride.
    pub windows: BertTokenizer,
    /// The model's head.
    pub architecture: Architecture,
    /// Label names by id, for a classification head (`None` for regression).
    pub labels: Option<Vec<String>>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// `Authorization: Bearer` key every route but `/health` needs, when set.
    pub api_key: Option<String>,
}

/// Request limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Inputs per request.
    pub max_client_batch_size: usize,
    /// Tokens per input.
    pub max_input_length: usize,
    /// Request body bytes.
    pub payload_limit: usize,
}

/// The router of every route.
pub fn router(shared: Arc<Shared>) -> Router {
    let limit = shared.limits.payload_limit;
    Router::new()
        .route("/embed", post(embed))
        .route("/v1/embeddings", post(openai_embeddings))
        .route("/predict", post(predict))
        .route("/rerank", post(rerank))
        .route("/ner", post(super::tasks::ner))
        .route("/qa", post(super::tasks::qa))
        .route("/fill-mask", post(super::tasks::fill_mask))
        .route("/tokenize", post(tokenize))
        .route("/info", get(info))
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(shared.clone(), authorize))
        .layer(middleware::from_fn_with_state(shared.clone(), count))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(shared)
}

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
}

impl ApiError {
    pub(super) fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
        }
    }

    pub(super) fn validation(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "validation", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            axum::Json(json!({"error": self.message, "error_type": self.kind})),
        )
            .into_response()
    }
}

pub(super) type Answer = Result<axum::Json<Value>, ApiError>;

/// Counts every answer by route and status.
async fn count(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let response = next.run(request).await;
    shared
        .metrics
        .observe_request(&route, response.status().as_u16(), started.elapsed());
    response
}

/// Refuses requests without the API key, when one is set (`/health` stays open).
async fn authorize(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    let Some(key) = &shared.api_key else {
        return next.run(request).await;
    };
    if request.uri().path() == "/health" {
        return next.run(request).await;
    }
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given == Some(key.as_str()) {
        next.run(request).await
    } else {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong `Authorization: Bearer` key",
        )
        .into_response()
    }
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such route (POST /embed, /v1/embeddings, /predict, /rerank, /ner, /qa, \
         /fill-mask, /tokenize; GET /health, /info, /metrics)",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "wrong method for this route (POST for the model's routes, GET for /health, /info, \
         /metrics)",
    )
}

async fn health() -> axum::Json<Value> {
    axum::Json(json!({"status": "ok"}))
}

async fn info(State(shared): State<Arc<Shared>>) -> axum::Json<Value> {
    axum::Json(shared.info.clone())
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        shared.metrics.render(),
    )
        .into_response()
}

/// The body as `T`: 413 over the payload limit, 400 for a body that is not UTF-8 JSON, 422 for
/// JSON of the wrong shape.
pub(super) fn parse<T: DeserializeOwned>(
    shared: &Shared,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let body = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "the body is over --payload-limit ({} bytes)",
                shared.limits.payload_limit
            ),
        ),
        status => ApiError::new(status, "bad_request", e.body_text()),
    })?;
    let text = std::str::from_utf8(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("the body is not UTF-8: {e}"),
        )
    })?;
    serde_json::from_str(text).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::validation(e.to_string()),
        _ => ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("malformed JSON: {e}"),
        ),
    })
}

/// One text or a list of them (`field` names it in errors).
pub(super) fn texts(value: &Value, field: &str) -> Result<Vec<String>, ApiError> {
    match value {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(items) => items
            .iter()
            .map(|v| {
                v.as_str().map(str::to_string).ok_or_else(|| {
                    ApiError::validation(format!("{field}: every item must be a string"))
                })
            })
            .collect(),
        Value::Null => Err(ApiError::validation(format!("`{field}` is missing"))),
        _ => Err(ApiError::validation(format!(
            "{field}: expected a string or a list of strings"
        ))),
    }
}

/// The inputs of `/predict`: a text, a pair `[text, text_pair]`, or a list of those.
fn predict_inputs(value: &Value) -> Result<Vec<(String, Option<String>)>, ApiError> {
    let pair = |v: &Value| -> Option<(String, Option<String>)> {
        match v {
            Value::String(s) => Some((s.clone(), None)),
            Value::Array(p) if p.len() == 2 => {
                Some((p[0].as_str()?.to_string(), Some(p[1].as_str()?.to_string())))
            }
            _ => None,
        }
    };
    let bad = || {
        ApiError::validation(
            "inputs: expected a text, a pair [text, text_pair], or a list of texts and pairs",
        )
    };
    match value {
        Value::Null => Err(ApiError::validation("`inputs` is missing")),
        Value::String(_) => Ok(vec![pair(value).ok_or_else(bad)?]),
        Value::Array(items) if items.len() == 2 && items.iter().all(Value::is_string) => {
            Ok(vec![pair(value).ok_or_else(bad)?])
        }
        Value::Array(items) => items.iter().map(|v| pair(v).ok_or_else(bad)).collect(),
        _ => Err(bad()),
    }
}

/// 422 for an empty batch or more than `--max-client-batch-size` inputs.
pub(super) fn batch_of(limits: &Limits, inputs: usize) -> Result<(), ApiError> {
    if inputs == 0 {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "empty",
            "the batch is empty",
        ));
    }
    within_batch_limit(limits, inputs)
}

/// 422 for more than `--max-client-batch-size` inputs.
fn within_batch_limit(limits: &Limits, inputs: usize) -> Result<(), ApiError> {
    if inputs > limits.max_client_batch_size {
        return Err(ApiError::validation(format!(
            "{inputs} inputs, more than --max-client-batch-size {}",
            limits.max_client_batch_size
        )));
    }
    Ok(())
}

/// Tokenizes `inputs` (off the async threads), checking the request limits: an input over
/// `--max-input-length` is refused, or cut longest first when `truncate`.
pub(super) async fn encodings(
    shared: &Arc<Shared>,
    inputs: Vec<(String, Option<String>)>,
    truncate: bool,
) -> Result<Vec<Encoded>, ApiError> {
    let limits = shared.limits;
    batch_of(&limits, inputs.len())?;
    let shared = shared.clone();
    tokio::task::spawn_blocking(move || {
        inputs
            .iter()
            .enumerate()
            .map(|(i, (text, pair))| {
                let tokenizer_error = |e: bert_data::DataError| {
                    ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "tokenizer",
                        format!("input {i}: {e}"),
                    )
                };
                let mut encoded = shared
                    .tokenizer
                    .encode(text, pair.as_deref())
                    .map_err(tokenizer_error)?;
                if encoded.len() > limits.max_input_length {
                    if !truncate {
                        return Err(ApiError::validation(format!(
                            "input {i} has {} tokens, more than the limit of {} \
                             (--max-input-length); send \"truncate\": true to cut it",
                            encoded.len(),
                            limits.max_input_length
                        )));
                    }
                    encoded = shared
                        .truncating
                        .encode(text, pair.as_deref())
                        .map_err(tokenizer_error)?;
                }
                Ok(encoded)
            })
            .collect()
    })
    .await
    .map_err(internal)?
}

/// A task that could not finish (a panic off the async threads): 500.
pub(super) fn internal(e: tokio::task::JoinError) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
}

/// [`encodings`] as model rows without per-token outputs.
async fn rows(
    shared: &Arc<Shared>,
    inputs: Vec<(String, Option<String>)>,
    truncate: bool,
) -> Result<Vec<Row>, ApiError> {
    Ok(encodings(shared, inputs, truncate)
        .await?
        .into_iter()
        .map(|e| Row::new(e.input_ids, e.token_type_ids))
        .collect())
}

/// Runs `rows` through the model: 429 when the queue is full.
pub(super) async fn run(shared: &Shared, rows: Vec<Row>) -> Result<Vec<RowOutput>, ApiError> {
    let (reply, answer) = tokio::sync::oneshot::channel();
    shared.queue.submit(Job { rows, reply }).map_err(|_| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "overloaded",
            "the model's queue is full (--max-concurrent-requests); retry later",
        )
    })?;
    answer
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "backend",
                "the model stopped",
            )
        })?
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "backend", e))
}

fn normalized(mut v: Vec<f32>) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= norm);
    v
}

/// `POST /embed`: `{"inputs": text | [texts], "normalize": true, "truncate": false}` → one
/// vector per input.
async fn embed(State(shared): State<Arc<Shared>>, body: Result<Bytes, BytesRejection>) -> Answer {
    let request: Value = parse(&shared, body)?;
    let inputs = texts(&request["inputs"], "inputs")?;
    let normalize = flag(&request, "normalize", true)?;
    let truncate = flag(&request, "truncate", false)?;
    let rows = rows(
        &shared,
        inputs.into_iter().map(|t| (t, None)).collect(),
        truncate,
    )
    .await?;
    let outs = run(&shared, rows).await?;
    let vectors: Vec<Vec<f32>> = outs
        .into_iter()
        .map(|o| {
            if normalize {
                normalized(o.embedding)
            } else {
                o.embedding
            }
        })
        .collect();
    Ok(axum::Json(json!(vectors)))
}

/// A boolean field, `default` when absent.
pub(super) fn flag(request: &Value, name: &str, default: bool) -> Result<bool, ApiError> {
    match &request[name] {
        Value::Null => Ok(default),
        Value::Bool(b) => Ok(*b),
        _ => Err(ApiError::validation(format!(
            "{name}: expected true or false"
        ))),
    }
}

/// `POST /v1/embeddings` (OpenAI): `{"input": text | [texts], "model": …}`.
async fn openai_embeddings(
    State(shared): State<Arc<Shared>>,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let request: Value = parse(&shared, body)?;
    let inputs = texts(&request["input"], "input")?;
    let rows = rows(
        &shared,
        inputs.into_iter().map(|t| (t, None)).collect(),
        false,
    )
    .await?;
    let tokens: usize = rows.iter().map(|r| r.input_ids.len()).sum();
    let outs = run(&shared, rows).await?;
    let data: Vec<Value> = outs
        .into_iter()
        .enumerate()
        .map(|(i, o)| json!({"object": "embedding", "index": i, "embedding": normalized(o.embedding)}))
        .collect();
    Ok(axum::Json(json!({
        "object": "list",
        "data": data,
        "model": request["model"].as_str().map_or_else(|| shared.info["model_id"].clone(), |m| json!(m)),
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    })))
}

/// 422 unless the model's head is one of `heads` (`route` and `what` name them).
pub(super) fn needs(
    shared: &Shared,
    route: &str,
    heads: &[Architecture],
    what: &str,
) -> Result<(), ApiError> {
    if heads.contains(&shared.architecture) {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "unsupported",
        format!(
            "{route} needs {what}; this model is {}",
            shared.architecture.name()
        ),
    ))
}

fn needs_classifier(shared: &Shared, route: &str) -> Result<(), ApiError> {
    needs(
        shared,
        route,
        &[Architecture::SequenceClassification],
        "a sequence-classification model (BertForSequenceClassification)",
    )
}

/// `POST /predict`: per input every label with its probability, best first (regression: the
/// score).
async fn predict(State(shared): State<Arc<Shared>>, body: Result<Bytes, BytesRejection>) -> Answer {
    needs_classifier(&shared, "/predict")?;
    let request: Value = parse(&shared, body)?;
    let inputs = predict_inputs(&request["inputs"])?;
    let single = !matches!(&request["inputs"], Value::Array(items) if !(items.len() == 2 && items.iter().all(Value::is_string)));
    let truncate = flag(&request, "truncate", false)?;
    let rows = rows(&shared, inputs, truncate).await?;
    let outs = run(&shared, rows).await?;
    let answers: Vec<Value> = outs
        .into_iter()
        .map(|o| {
            let logits = o.logits.unwrap_or_default();
            match &shared.labels {
                None => json!([{"score": logits.first().copied().unwrap_or(f32::NAN)}]),
                Some(names) => {
                    let p = crate::finetune::softmax(&logits);
                    let mut order: Vec<usize> = (0..p.len()).collect();
                    order.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
                    json!(order
                        .into_iter()
                        .map(|k| json!({"label": names.get(k).cloned().unwrap_or_else(|| format!("LABEL_{k}")), "score": p[k]}))
                        .collect::<Vec<_>>())
                }
            }
        })
        .collect();
    Ok(axum::Json(if single {
        answers.into_iter().next().unwrap_or(Value::Null)
    } else {
        json!(answers)
    }))
}

/// `POST /rerank` (a one-label cross-encoder): `{"query": q, "texts": [...]}` → every text's
/// index and score (the logit's sigmoid; `"raw_scores": true` for the logit), best first.
async fn rerank(State(shared): State<Arc<Shared>>, body: Result<Bytes, BytesRejection>) -> Answer {
    needs_classifier(&shared, "/rerank")?;
    let request: Value = parse(&shared, body)?;
    let query = request["query"]
        .as_str()
        .ok_or_else(|| ApiError::validation("query: expected a string"))?
        .to_string();
    let candidates = texts(&request["texts"], "texts")?;
    let raw = flag(&request, "raw_scores", false)?;
    let return_text = flag(&request, "return_text", false)?;
    let truncate = flag(&request, "truncate", false)?;
    let pairs = candidates
        .iter()
        .map(|t| (query.clone(), Some(t.clone())))
        .collect();
    let rows = rows(&shared, pairs, truncate).await?;
    let outs = run(&shared, rows).await?;
    let mut scored: Vec<(usize, f32)> = outs
        .into_iter()
        .enumerate()
        .map(|(i, o)| {
            let logit = o
                .logits
                .and_then(|l| l.first().copied())
                .unwrap_or(f32::NAN);
            (
                i,
                if raw {
                    logit
                } else {
                    1.0 / (1.0 + (-logit).exp())
                },
            )
        })
        .collect();
    scored.sort_by(|a, b| b.1.total_cmp(&a.1));
    Ok(axum::Json(json!(
        scored
            .into_iter()
            .map(|(i, s)| {
                let mut v = json!({"index": i, "score": s});
                if return_text {
                    v["text"] = json!(candidates[i]);
                }
                v
            })
            .collect::<Vec<_>>()
    )))
}

/// `POST /tokenize`: `{"inputs": text | [texts]}` → per input its tokens: id, text, whether
/// special, character span.
async fn tokenize(
    State(shared): State<Arc<Shared>>,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let request: Value = parse(&shared, body)?;
    let inputs = texts(&request["inputs"], "inputs")?;
    within_batch_limit(&shared.limits, inputs.len())?;
    let mut all = Vec::new();
    for (i, text) in inputs.iter().enumerate() {
        let e = shared.tokenizer.encode(text, None).map_err(|e| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "tokenizer",
                format!("input {i}: {e}"),
            )
        })?;
        let tokens: Vec<Value> = e
            .input_ids
            .iter()
            .zip(&e.tokens)
            .zip(&e.special_tokens_mask)
            .zip(&e.offsets)
            .map(|(((id, text), special), (start, stop))| {
                json!({"id": id, "text": text, "special": *special == 1, "start": start, "stop": stop})
            })
            .collect();
        all.push(json!(tokens));
    }
    Ok(axum::Json(json!(all)))
}
