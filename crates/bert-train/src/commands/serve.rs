//! `bert serve`: the HTTP inference server ([`crate::serve`]).

use std::path::PathBuf;

use anyhow::Result;

use crate::serve::{Options, serve};

/// Options of `bert serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Hugging Face model directory, or a Hub model id.
    #[arg(long)]
    pub model: PathBuf,
    /// Address to bind (127.0.0.1: this machine only).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port (0: any free one; the address is printed when ready).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// cpu, wgpu or cuda (default: the best compiled in).
    #[arg(long)]
    pub backend: Option<String>,
    /// Padded tokens of one forward pass (requests waiting together are batched up to it).
    #[arg(long, default_value_t = 16384)]
    pub max_batch_tokens: usize,
    /// Inputs one request may carry.
    #[arg(long, default_value_t = 32)]
    pub max_client_batch_size: usize,
    /// Requests that may wait for the model; more get 429.
    #[arg(long, default_value_t = 512)]
    pub max_concurrent_requests: usize,
    /// Tokens per input (default and cap: the model's max_position_embeddings).
    #[arg(long)]
    pub max_input_length: Option<usize>,
    /// Largest request body, in bytes; larger ones get 413.
    #[arg(long, default_value_t = 2_000_000)]
    pub payload_limit: usize,
    /// Require `Authorization: Bearer KEY` on every route but /health.
    #[arg(long)]
    pub api_key: Option<String>,
}

/// `bert serve`.
pub fn run(args: &ServeArgs) -> Result<()> {
    serve(&Options {
        model: args.model.clone(),
        host: args.host.clone(),
        port: args.port,
        backend: args.backend.clone(),
        max_batch_tokens: args.max_batch_tokens,
        max_client_batch_size: args.max_client_batch_size,
        max_concurrent_requests: args.max_concurrent_requests,
        max_input_length: args.max_input_length,
        payload_limit: args.payload_limit,
        api_key: args.api_key.clone(),
    })
}
