//! `bert serve`: an HTTP inference server for a model directory, with dynamic batching, in
//! the shape of Hugging Face's text-embeddings-inference (TEI): `/embed`, `/v1/embeddings`
//! (OpenAI), `/predict`, `/rerank`, `/tokenize`, `/health`, `/info`, `/metrics` (Prometheus),
//! and the other heads' routes as transformers' pipelines answer: `/ner`, `/qa`, `/fill-mask`.
//!
//! The model is loaded once, on one thread ([`engine`]) that runs every forward pass; requests
//! are tokenized on the server's threads, wait in a bounded queue, and are batched together up
//! to a token budget. axum on tokio serves HTTP; SIGTERM or Ctrl-C stops accepting, answers
//! what is in flight, and returns.
//!
//! ```no_run
//! use bert_train::serve::{Options, serve};
//! let options = Options {
//!     model: ".cache/models/all-MiniLM-L6-v2".into(),
//!     ..Options::default()
//! };
//! // Blocks until SIGTERM/Ctrl-C; prints `listening on http://127.0.0.1:8080` when ready.
//! serve(&options).unwrap();
//! ```

pub mod api;
pub mod engine;
pub mod metrics;
mod tasks;

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use bert_data::{BertTokenizer, Truncation};
use serde_json::json;

use bert_model::Architecture;

use crate::backend::BackendKind;
use engine::{Batching, Pooling};

/// What one more forward pass costs, in padded tokens (its fixed work: launching every layer's
/// kernels, the pooling, the host read), against which the model thread weighs padding rows
/// of different lengths together.
const PASS_COST: usize = 64;
/// Tokens per question answering window (when the model and `--max-input-length` allow).
const QA_WINDOW: usize = 384;
/// Tokens consecutive windows share (at most a third of the window).
const QA_STRIDE: usize = 128;

/// What `bert serve` serves and how.
#[derive(Debug, Clone)]
pub struct Options {
    /// A Hugging Face model directory or Hub id.
    pub model: PathBuf,
    /// Address to bind.
    pub host: String,
    /// Port (0: any free one, printed when ready).
    pub port: u16,
    /// cpu, wgpu or cuda (default: the best compiled in).
    pub backend: Option<String>,
    /// Padded tokens per forward pass.
    pub max_batch_tokens: usize,
    /// Inputs per request.
    pub max_client_batch_size: usize,
    /// Requests waiting for the model before new ones get 429.
    pub max_concurrent_requests: usize,
    /// Tokens per input (default and cap: the model's position table).
    pub max_input_length: Option<usize>,
    /// Request body bytes.
    pub payload_limit: usize,
    /// `Authorization: Bearer` key for every route but `/health`.
    pub api_key: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            model: PathBuf::new(),
            host: "127.0.0.1".into(),
            port: 8080,
            backend: None,
            max_batch_tokens: 16384,
            max_client_batch_size: 32,
            max_concurrent_requests: 512,
            max_input_length: None,
            payload_limit: 2_000_000,
            api_key: None,
        }
    }
}

/// Loads the model and serves until SIGTERM or Ctrl-C.
pub fn serve(options: &Options) -> Result<()> {
    let model_dir = crate::hub::resolve_model(&options.model)?;
    let config = bert_model::load_config(&model_dir)?;
    let kind = BackendKind::resolve(options.backend.as_deref())?;
    let positions = config.max_position_embeddings;
    let max_input_length = options.max_input_length.unwrap_or(positions).min(positions);
    let tokenizer = BertTokenizer::from_dir(&model_dir)
        .with_context(|| format!("cannot load the tokenizer of {}", model_dir.display()))?
        .with_model_limits(crate::finetune::model_limits(&config));
    let truncating = tokenizer
        .clone()
        .with_truncation(max_input_length, Truncation::LongestFirst)?;
    let pooling = Pooling::of_dir(&model_dir)?;
    let architecture = crate::commands::encode::architecture_of(&config);
    let labels = match architecture {
        Architecture::SequenceClassification => {
            (config.problem_type.as_deref() != Some("regression")).then(|| config.labels())
        }
        Architecture::TokenClassification => Some(config.labels()),
        _ => None,
    };
    // Question answering windows as `bert predict` cuts them: 384 tokens (or fewer), a
    // stride of 128 (at most a third of the window).
    let window = QA_WINDOW.min(max_input_length);
    let windows = tokenizer.with_windows(window, QA_STRIDE.min(window / 3))?;
    let metrics = Arc::new(metrics::Metrics::new().context("the metrics registry")?);
    let batching = Batching {
        capacity: options.max_concurrent_requests,
        max_batch_tokens: options.max_batch_tokens,
        pass_cost: PASS_COST,
    };
    let (queue, model_thread) = crate::with_backend!(kind, |B, device| engine::start::<B>(
        &model_dir,
        &config,
        pooling,
        batching,
        metrics.clone(),
        device
    )?);
    let limits = api::Limits {
        max_client_batch_size: options.max_client_batch_size.max(1),
        max_input_length,
        payload_limit: options.payload_limit,
    };
    let info = json!({
        "model_id": options.model.display().to_string(),
        "model_dir": model_dir.display().to_string(),
        "architecture": architecture.name(),
        "labels": labels,
        "pooling": pooling,
        "hidden_size": config.hidden_size,
        "max_input_length": max_input_length,
        "max_batch_tokens": options.max_batch_tokens,
        "max_client_batch_size": limits.max_client_batch_size,
        "max_concurrent_requests": options.max_concurrent_requests,
        "payload_limit": options.payload_limit,
        "backend": kind.to_string(),
        "version": env!("CARGO_PKG_VERSION"),
    });
    let shared = Arc::new(api::Shared {
        queue,
        tokenizer,
        truncating,
        limits,
        info,
        windows,
        architecture,
        labels,
        metrics,
        api_key: options.api_key.clone(),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the server's runtime")?;
    let served = runtime.block_on(async {
        let address = format!("{}:{}", options.host, options.port);
        let listener = tokio::net::TcpListener::bind(&address)
            .await
            .with_context(|| format!("cannot listen on {address}"))?;
        let bound = listener.local_addr()?;
        println!("listening on http://{bound}");
        let _ = std::io::stdout().flush();
        axum::serve(listener, api::router(shared))
            .with_graceful_shutdown(stop_signal())
            .await
            .context("the server failed")
    });
    // Every route's queue handle is gone with the router: the model thread ends.
    let _ = model_thread.join();
    served
}

/// Resolves on SIGTERM or Ctrl-C (SIGINT).
async fn stop_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    eprintln!("stopping: answering the requests in flight");
}
