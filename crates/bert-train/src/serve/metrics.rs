//! `GET /metrics` of `bert serve`: Prometheus counters, gauges and histograms (the
//! `prometheus` crate's registry and text format).

use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

/// The server's metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// Requests answered, by route and HTTP status.
    pub requests: IntCounterVec,
    /// Time from a request's arrival to its answer, by route.
    pub request_seconds: HistogramVec,
    /// Requests waiting for the model.
    pub queue_size: IntGauge,
    /// Rows per forward pass.
    pub batch_size: Histogram,
    /// Real tokens per forward pass.
    pub batch_tokens: Histogram,
    /// Tokens run through the model.
    pub tokens: IntCounter,
    /// Time of one forward pass (host reads of its outputs included).
    pub inference_seconds: Histogram,
}

impl Metrics {
    /// A fresh registry with every metric at zero.
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new_custom(Some("bert_serve".into()), None)?;
        let requests = IntCounterVec::new(
            Opts::new("requests_total", "Requests answered, by route and status"),
            &["route", "status"],
        )?;
        let request_seconds = HistogramVec::new(
            HistogramOpts::new(
                "request_duration_seconds",
                "Time from a request's arrival to its answer",
            )
            .buckets(prometheus::exponential_buckets(0.001, 2.0, 16)?),
            &["route"],
        )?;
        let queue_size = IntGauge::new("queue_size", "Requests waiting for the model")?;
        let batch_size = Histogram::with_opts(
            HistogramOpts::new("batch_size", "Rows per forward pass")
                .buckets(prometheus::exponential_buckets(1.0, 2.0, 11)?),
        )?;
        let batch_tokens = Histogram::with_opts(
            HistogramOpts::new("batch_tokens", "Real tokens per forward pass")
                .buckets(prometheus::exponential_buckets(16.0, 2.0, 12)?),
        )?;
        let tokens = IntCounter::new("tokens_total", "Tokens run through the model")?;
        let inference_seconds = Histogram::with_opts(
            HistogramOpts::new("inference_duration_seconds", "Time of one forward pass")
                .buckets(prometheus::exponential_buckets(0.0005, 2.0, 16)?),
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(request_seconds.clone()))?;
        registry.register(Box::new(queue_size.clone()))?;
        registry.register(Box::new(batch_size.clone()))?;
        registry.register(Box::new(batch_tokens.clone()))?;
        registry.register(Box::new(tokens.clone()))?;
        registry.register(Box::new(inference_seconds.clone()))?;
        Ok(Self {
            registry,
            requests,
            request_seconds,
            queue_size,
            batch_size,
            batch_tokens,
            tokens,
            inference_seconds,
        })
    }

    /// Records one forward pass of `rows` rows and `tokens` real tokens.
    pub fn observe_batch(&self, rows: usize, tokens: usize, took: Duration) {
        self.batch_size.observe(rows as f64);
        self.batch_tokens.observe(tokens as f64);
        self.tokens.inc_by(tokens as u64);
        self.inference_seconds.observe(took.as_secs_f64());
    }

    /// Records an answered request.
    pub fn observe_request(&self, route: &str, status: u16, took: Duration) {
        self.requests
            .with_label_values(&[route, &status.to_string()])
            .inc();
        self.request_seconds
            .with_label_values(&[route])
            .observe(took.as_secs_f64());
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding to a Vec cannot fail for the text format.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}
