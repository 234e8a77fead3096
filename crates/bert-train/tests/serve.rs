//! `bert serve` over real HTTP on 127.0.0.1 (an ephemeral port): its answers against `bert
//! encode` and `bert predict`, every error status (after which the server still answers),
//! the queue under concurrent clients, and SIGTERM with requests in flight.

mod common;
#[path = "common/encode.rs"]
mod encode;
#[path = "common/tasks.rs"]
mod tasks;
use common::*;
use encode::Tensors;
use tasks::{task_config, write_conll, write_squad};

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// A running `bert serve`, killed when dropped.
struct Server {
    child: Child,
    url: String,
}

impl Server {
    /// Starts `bert serve --model MODEL --port 0 EXTRA…` and waits for its address.
    fn start(model: &Path, extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_bert"))
            .args([
                "serve",
                "--model",
                model.to_str().expect("utf8"),
                "--port",
                "0",
            ])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("bert serve");
        let stdout = child.stdout.take().expect("stdout");
        let (send, receive) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("listening on ") {
                    let _ = send.send(url.to_string());
                }
            }
        });
        let url = receive
            .recv_timeout(Duration::from_secs(120))
            .expect("the server printed its address");
        Self { child, url }
    }

    /// `METHOD path` with `body` (raw bytes) and `headers`: status and body text.
    fn call(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
        headers: &[(&str, &str)],
    ) -> (u16, String) {
        let mut request =
            ureq::request(method, &format!("{}{path}", self.url)).timeout(Duration::from_secs(300));
        for (k, v) in headers {
            request = request.set(k, v);
        }
        let result = if method == "GET" {
            request.call()
        } else {
            request
                .set("Content-Type", "application/json")
                .send_bytes(body)
        };
        match result {
            Ok(r) => (r.status(), r.into_string().expect("body")),
            Err(ureq::Error::Status(code, r)) => (code, r.into_string().expect("body")),
            Err(e) => panic!("{method} {path}: {e}"),
        }
    }

    /// `POST path` with a JSON body: status and JSON answer.
    fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let (status, text) = self.call("POST", path, body.to_string().as_bytes(), &[]);
        (status, serde_json::from_str(&text).expect("a JSON answer"))
    }

    /// Asserts that the server still answers `/health`.
    fn healthy(&self) {
        assert_eq!(self.call("GET", "/health", b"", &[]).0, 200);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The rows of a `[n, width]` tensor.
fn rows(values: &[f32], width: usize) -> Vec<Vec<f32>> {
    values.chunks(width).map(<[f32]>::to_vec).collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn normalized(v: &[f32]) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter().map(|x| x / n).collect()
}

fn vectors(v: &Value) -> Vec<Vec<f32>> {
    v.as_array()
        .expect("a list")
        .iter()
        .map(|r| {
            r.as_array()
                .expect("a vector")
                .iter()
                .map(|x| x.as_f64().expect("a number") as f32)
                .collect()
        })
        .collect()
}

const SENTENCES: [&str; 3] = [
    "The quick brown fox jumps over the lazy dog.",
    "Call me Ishmael.",
    "It was the best of times, it was the worst of times, it was the age of wisdom.",
];

/// `/embed` and `/v1/embeddings` give `bert encode`'s `mean_pooled` (normalized), `/tokenize`
/// its ids; every bad request gets its status and the server keeps answering.
#[test]
fn embed_matches_bert_encode_and_bad_requests_get_their_status() {
    let model = minilm_dir();
    let dir = tempfile::tempdir().expect("tempdir");
    let lines: Vec<Value> = SENTENCES.iter().map(|s| json!({"text": s})).collect();
    let output = over_lines("encode", &model, &lines, dir.path(), "out.safetensors", &[]);
    let encoded = read_tensors(&output);
    let pooled = rows(&encoded["mean_pooled"], 384);
    let tensors = Tensors::open(&output);
    let as_ints =
        |name: &str| -> Vec<i64> { tensors.get(name).1.into_iter().map(|v| v as i64).collect() };
    let masks = as_ints("attention_mask");
    let input_ids = as_ints("input_ids");
    let seq = masks.len() / SENTENCES.len();

    let server = Server::start(&model, &["--payload-limit", "4000"]);
    let (status, answer) = server.post("/embed", &json!({"inputs": SENTENCES}));
    assert_eq!(status, 200, "{answer}");
    let embedded = vectors(&answer);
    assert_eq!(embedded.len(), 3);
    for (got, want) in embedded.iter().zip(&pooled) {
        let d = max_diff(got, &normalized(want));
        assert!(d < 1e-5, "/embed vs bert encode: {d}");
    }
    let (_, raw) = server.post(
        "/embed",
        &json!({"inputs": SENTENCES[1], "normalize": false}),
    );
    let d = max_diff(&vectors(&raw)[0], &pooled[1]);
    assert!(d < 1e-5, "/embed normalize false: {d}");

    let (status, openai) = server.post(
        "/v1/embeddings",
        &json!({"input": SENTENCES, "model": "minilm"}),
    );
    assert_eq!(status, 200, "{openai}");
    assert_eq!(openai["object"], "list");
    assert_eq!(openai["model"], "minilm");
    let tokens: i64 = masks.iter().sum();
    assert_eq!(openai["usage"]["prompt_tokens"].as_i64(), Some(tokens));
    for (i, item) in openai["data"].as_array().expect("data").iter().enumerate() {
        assert_eq!(item["index"], i);
        let got = vectors(&json!([item["embedding"]]));
        assert!(max_diff(&got[0], &embedded[i]) < 1e-6);
    }

    let (status, tokenized) = server.post("/tokenize", &json!({"inputs": SENTENCES[0]}));
    assert_eq!(status, 200);
    let ids: Vec<i64> = tokenized[0]
        .as_array()
        .expect("tokens")
        .iter()
        .map(|t| t["id"].as_i64().expect("id"))
        .collect();
    assert_eq!(ids[..], input_ids[..ids.len()]);
    assert_eq!(tokenized[0][0]["special"], true);
    assert_eq!(tokenized[0][1]["text"], "the");
    assert_eq!(
        (
            tokenized[0][1]["start"].clone(),
            tokenized[0][1]["stop"].clone()
        ),
        (json!(0), json!(3))
    );
    assert!(seq >= ids.len());

    let (status, info) = server.post("/info", &json!({}));
    assert_eq!(status, 405, "/info is GET: {info}");
    assert_eq!(info["error_type"], "method_not_allowed");
    let (_, info) = server.call("GET", "/info", b"", &[]);
    let info: Value = serde_json::from_str(&info).expect("json");
    assert_eq!(info["architecture"], "BertModel");
    assert_eq!(info["pooling"], "mean");
    assert_eq!(info["max_input_length"], 512);

    // Bad requests: each gets its status and error_type, and the server goes on.
    let long = "word ".repeat(600);
    let many: Vec<&str> = vec!["a"; 33];
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("/embed", b"{\"inputs\": ".to_vec(), 400, "malformed JSON"),
        (
            "/embed",
            b"{\"inputs\": \"\xff\xfe\"}".to_vec(),
            400,
            "not UTF-8",
        ),
        (
            "/embed",
            json!({"inputs": 5}).to_string().into_bytes(),
            422,
            "a string or a list",
        ),
        (
            "/embed",
            json!({"input": "x"}).to_string().into_bytes(),
            422,
            "`inputs` is missing",
        ),
        (
            "/embed",
            json!({"inputs": []}).to_string().into_bytes(),
            422,
            "empty",
        ),
        (
            "/embed",
            json!({"inputs": many}).to_string().into_bytes(),
            422,
            "--max-client-batch-size 32",
        ),
        (
            "/embed",
            json!({"inputs": long}).to_string().into_bytes(),
            422,
            "limit of 512",
        ),
        (
            "/embed",
            json!({"inputs": "x".repeat(5000)}).to_string().into_bytes(),
            413,
            "--payload-limit",
        ),
        (
            "/predict",
            json!({"inputs": "x"}).to_string().into_bytes(),
            422,
            "sequence-classification",
        ),
        (
            "/rerank",
            json!({"query": "x", "texts": ["y"]})
                .to_string()
                .into_bytes(),
            422,
            "sequence-classification",
        ),
        ("/nowhere", b"{}".to_vec(), 404, "no such route"),
    ];
    for (path, body, want, needle) in cases {
        let (status, text) = server.call("POST", path, &body, &[]);
        assert_eq!(status, want, "{path}: {text}");
        let error: Value = serde_json::from_str(&text).expect("a JSON error");
        let message = error["error"].as_str().expect("error");
        assert!(
            message.contains(needle),
            "{path}: {message:?} lacks {needle:?}"
        );
        assert!(error["error_type"].is_string());
        server.healthy();
    }
    // truncate: true cuts the long input instead.
    let (status, cut) = server.post("/embed", &json!({"inputs": long, "truncate": true}));
    assert_eq!(status, 200, "{cut}");
    // Every answer above is counted.
    let (_, metrics) = server.call("GET", "/metrics", b"", &[]);
    assert!(
        metrics.contains("bert_serve_requests_total{route=\"/embed\",status=\"422\"} 5"),
        "{metrics}"
    );
    assert!(metrics.contains("bert_serve_batch_size_count"));
}

/// `--api-key`: every route but `/health` needs `Authorization: Bearer KEY`.
#[test]
fn an_api_key_guards_every_route_but_health() {
    let server = Server::start(&minilm_dir(), &["--api-key", "s3cret"]);
    let body = json!({"inputs": "hello"}).to_string();
    assert_eq!(server.call("POST", "/embed", body.as_bytes(), &[]).0, 401);
    let wrong = [("Authorization", "Bearer nope")];
    assert_eq!(
        server.call("POST", "/embed", body.as_bytes(), &wrong).0,
        401
    );
    let right = [("Authorization", "Bearer s3cret")];
    assert_eq!(
        server.call("POST", "/embed", body.as_bytes(), &right).0,
        200
    );
    assert_eq!(server.call("GET", "/info", b"", &[]).0, 401);
    server.healthy();
}

/// `clients` threads each sending `requests` one-sentence `/embed` requests one after another:
/// how many got 200 and how many 429 (anything else fails the test).
fn hammer(server: &Server, clients: usize, requests: usize) -> (usize, usize) {
    let url = server.url.clone();
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let url = url.clone();
            std::thread::spawn(move || {
                let mut counts = (0usize, 0usize);
                for i in 0..requests {
                    let body = json!({"inputs": format!("client {c} sends request {i}")});
                    match ureq::post(&format!("{url}/embed"))
                        .timeout(Duration::from_secs(300))
                        .send_string(&body.to_string())
                    {
                        Ok(r) if r.status() == 200 => counts.0 += 1,
                        Err(ureq::Error::Status(429, _)) => counts.1 += 1,
                        other => panic!("client {c} request {i}: {other:?}"),
                    }
                }
                counts
            })
        })
        .collect();
    threads.into_iter().fold((0, 0), |(a, b), t| {
        let (x, y) = t.join().expect("a client");
        (a + x, b + y)
    })
}

/// 64 concurrent clients × 100 requests: every one is answered (200), requests waiting
/// together are batched, memory stays bounded; with a queue of 2, the others get 429 and the
/// server goes on.
#[test]
fn concurrent_clients_are_batched_and_a_full_queue_answers_429() {
    let server = Server::start(&minilm_dir(), &[]);
    let started = Instant::now();
    let (answered, refused) = hammer(&server, 64, 100);
    let took = started.elapsed();
    assert_eq!((answered, refused), (6400, 0), "every request answered");
    let (_, metrics) = server.call("GET", "/metrics", b"", &[]);
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in {metrics}"))
    };
    let forwards = value("bert_serve_batch_size_count");
    assert!(
        forwards < 6400.0,
        "concurrent requests share forward passes ({forwards} for 6400)"
    );
    let rss_kib: f64 = std::fs::read_to_string(format!("/proc/{}/status", server.child.id()))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VmHWM:")?
                    .trim()
                    .strip_suffix("kB")?
                    .trim()
                    .parse()
                    .ok()
            })
        })
        .unwrap_or(0.0);
    eprintln!(
        "6400 requests from 64 clients in {:.1}s, {forwards} forward passes, server peak RSS {:.0} MiB",
        took.as_secs_f64(),
        rss_kib / 1024.0
    );
    assert!(rss_kib < 2.0 * 1024.0 * 1024.0, "peak RSS {rss_kib} kB");
    drop(server);

    let small = Server::start(&minilm_dir(), &["--max-concurrent-requests", "2"]);
    let (answered, refused) = hammer(&small, 16, 20);
    assert_eq!(answered + refused, 320);
    assert!(
        answered > 0 && refused > 0,
        "{answered} answered, {refused} refused"
    );
    let (_, metrics) = small.call("GET", "/metrics", b"", &[]);
    assert!(metrics.contains("status=\"429\""), "{metrics}");
    small.healthy();
}

/// SIGTERM while requests are in flight: each is answered, then the server exits 0.
#[test]
fn sigterm_answers_the_requests_in_flight_and_exits_zero() {
    let mut server = Server::start(&minilm_dir(), &[]);
    let url = server.url.clone();
    let batch: Vec<String> = (0..32)
        .map(|i| format!("{} sentence number {i}", SENTENCES[2]))
        .collect();
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (url, batch) = (url.clone(), batch.clone());
            std::thread::spawn(move || {
                ureq::post(&format!("{url}/embed"))
                    .timeout(Duration::from_secs(300))
                    .send_string(&json!({"inputs": batch}).to_string())
                    .map(|r| r.status())
                    .map_err(|e| e.to_string())
            })
        })
        .collect();
    // The requests are sent at once; the model takes a while over 256 sentences.
    std::thread::sleep(Duration::from_millis(500));
    let pid = server.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill")
            .success()
    );
    for c in clients {
        assert_eq!(c.join().expect("client").expect("answered"), 200);
    }
    let status = server.child.wait().expect("wait");
    assert!(status.success(), "{status}");
}

/// Fine-tunes the tiny fixture on a separable task (`regression`: one label) into
/// `dir/name/final`.
fn fine_tuned(dir: &Path, name: &str, regression: bool) -> PathBuf {
    let config = classification_config(dir, name, regression);
    ok(&[
        "finetune",
        "--config",
        config.to_str().expect("utf8"),
        "--set",
        "training.epochs=2",
    ]);
    dir.join(name).join("final")
}

/// Runs `bert COMMAND --model MODEL --input IN.jsonl --output dir/OUTPUT EXTRA…` over
/// `lines` (JSONL objects); the output's path.
fn over_lines(
    command: &str,
    model: &Path,
    lines: &[Value],
    dir: &Path,
    output: &str,
    extra: &[&str],
) -> PathBuf {
    let input = dir.join(format!("{output}.in.jsonl"));
    let text: Vec<String> = lines.iter().map(Value::to_string).collect();
    std::fs::write(&input, text.join("\n")).expect("input");
    let output = dir.join(output);
    ok(&[
        command,
        "--model",
        model.to_str().expect("utf8"),
        "--input",
        input.to_str().expect("utf8"),
        "--output",
        output.to_str().expect("utf8"),
    ]
    .into_iter()
    .chain(extra.iter().copied())
    .collect::<Vec<_>>());
    output
}

/// `bert predict EXTRA…` of `lines` (JSONL objects) with the model in `model`.
fn predicted_with(dir: &Path, model: &Path, lines: &[Value], extra: &[&str]) -> Vec<Value> {
    let output = over_lines("predict", model, lines, dir, "predicted.jsonl", extra);
    std::fs::read_to_string(&output)
        .expect("output")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect()
}

/// `bert predict` of `lines` (JSONL objects) with the model in `model`.
fn predicted(dir: &Path, model: &Path, lines: &[Value]) -> Vec<Value> {
    predicted_with(dir, model, lines, &[])
}

/// `/predict` gives `bert predict`'s label probabilities (all labels, best first), for texts
/// and pairs; `/rerank` on a one-label model gives the sigmoid of `bert predict`'s score.
#[test]
fn predict_and_rerank_match_bert_predict() {
    let dir = tempfile::tempdir().expect("tempdir");
    let classifier = fine_tuned(dir.path(), "cls", false);
    let inputs = [("w5 w6 w7 w8", None), ("w41 w42 w43", Some("w5 w44"))];
    let lines: Vec<Value> = inputs
        .iter()
        .map(|(t, p)| match p {
            Some(p) => json!({"text": t, "text_pair": p}),
            None => json!({"text": t}),
        })
        .collect();
    let want = predicted(dir.path(), &classifier, &lines);
    let server = Server::start(&classifier, &[]);
    let (status, info) = server.call("GET", "/info", b"", &[]);
    assert_eq!(status, 200);
    assert!(info.contains("BertForSequenceClassification"), "{info}");
    let (status, got) = server.post(
        "/predict",
        &json!({"inputs": ["w5 w6 w7 w8", ["w41 w42 w43", "w5 w44"]]}),
    );
    assert_eq!(status, 200, "{got}");
    for (answer, want) in got.as_array().expect("answers").iter().zip(&want) {
        let labels = answer.as_array().expect("labels");
        assert_eq!(labels.len(), 2, "every label: {answer}");
        assert_eq!(labels[0]["label"], want["label"], "best first");
        for l in labels {
            let name = l["label"].as_str().expect("label");
            let (a, b) = (
                l["score"].as_f64().expect("score"),
                want["scores"][name].as_f64().expect("score"),
            );
            assert!((a - b).abs() < 1e-5, "{name}: {a} vs {b}");
        }
    }
    // A single text answers with one list; a single pair too.
    let (_, one) = server.post("/predict", &json!({"inputs": ["w41 w42 w43", "w5 w44"]}));
    assert_eq!(one[0]["label"], want[1]["label"], "{one}");
    drop(server);

    let scorer = fine_tuned(dir.path(), "reg", true);
    let texts = ["w5 w6", "w41 w42", "w7 w8 w9"];
    let lines: Vec<Value> = texts
        .iter()
        .map(|t| json!({"text": "w10 w11", "text_pair": t}))
        .collect();
    let want = predicted(dir.path(), &scorer, &lines);
    let server = Server::start(&scorer, &[]);
    let (status, ranked) = server.post(
        "/rerank",
        &json!({"query": "w10 w11", "texts": texts, "return_text": true}),
    );
    assert_eq!(status, 200, "{ranked}");
    let ranked = ranked.as_array().expect("ranked");
    assert_eq!(ranked.len(), 3);
    for pair in ranked.windows(2) {
        assert!(
            pair[0]["score"].as_f64() >= pair[1]["score"].as_f64(),
            "best first"
        );
    }
    for r in ranked {
        let i = r["index"].as_u64().expect("index") as usize;
        assert_eq!(r["text"], texts[i]);
        let logit = want[i]["score"].as_f64().expect("score");
        let sigmoid = 1.0 / (1.0 + (-logit).exp());
        let got = r["score"].as_f64().expect("score");
        assert!((got - sigmoid).abs() < 1e-5, "text {i}: {got} vs {sigmoid}");
    }
    let (_, regression) = server.post("/predict", &json!({"inputs": "w5 w6"}));
    assert!(regression[0]["score"].is_number(), "{regression}");
}

/// Asserts that `got` equals `want` but for numbers, which must agree within 1e-5.
fn same_json(got: &Value, want: &Value, at: &str) {
    match (got, want) {
        (Value::Number(a), Value::Number(b)) => {
            let (a, b) = (a.as_f64().expect("f64"), b.as_f64().expect("f64"));
            assert!((a - b).abs() < 1e-5, "{at}: {a} vs {b}");
        }
        (Value::Array(a), Value::Array(b)) => {
            assert_eq!(a.len(), b.len(), "{at}: {got} vs {want}");
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                same_json(x, y, &format!("{at}[{i}]"));
            }
        }
        (Value::Object(a), Value::Object(b)) => {
            let keys = |o: &serde_json::Map<String, Value>| o.keys().cloned().collect::<Vec<_>>();
            assert_eq!(keys(a), keys(b), "{at}: {got} vs {want}");
            for (k, x) in a {
                same_json(x, &b[k], &format!("{at}.{k}"));
            }
        }
        _ => assert_eq!(got, want, "{at}"),
    }
}

/// `/fill-mask` gives `bert fill-mask`'s candidates, one text or several; `/ner` and `/qa`
/// give `bert predict`'s answers on models fine-tuned here (entities with character spans;
/// answers chosen over several windows, top-k); each route refuses a model without its head.
#[test]
fn fill_mask_ner_and_qa_match_the_cli() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mlm = root().join("tests/fixtures/tiny-bert/BertForMaskedLM");
    let texts = ["w7 [MASK] w9 w11", "[MASK] w20 w33 [MASK] w5"];
    let server = Server::start(&mlm, &[]);
    let mut singles = Vec::new();
    for text in texts {
        let out = ok(&[
            "fill-mask",
            "--model",
            mlm.to_str().expect("utf8"),
            text,
            "--top-k",
            "3",
            "--json",
        ]);
        let want: Value = serde_json::from_str(&out).expect("json");
        let (status, got) = server.post("/fill-mask", &json!({"inputs": text, "top_k": 3}));
        assert_eq!(status, 200, "{got}");
        assert_eq!(
            got.as_array().expect("masks").len(),
            text.matches("[MASK]").count()
        );
        same_json(&got, &want, text);
        singles.push(got);
    }
    let (status, both) = server.post("/fill-mask", &json!({"inputs": texts, "top_k": 3}));
    assert_eq!(status, 200, "{both}");
    same_json(&both, &json!(singles), "batch");
    for (route, body, needle) in [
        ("/fill-mask", json!({"inputs": "w5 w6"}), "no [MASK]"),
        (
            "/fill-mask",
            json!({"inputs": "w5 [MASK]", "top_k": 0}),
            "top_k",
        ),
        ("/ner", json!({"inputs": "w5 w6"}), "token-classification"),
        (
            "/qa",
            json!({"question": "w5", "context": "w6"}),
            "question-answering",
        ),
    ] {
        let (status, answer) = server.post(route, &body);
        assert_eq!(status, 422, "{route}: {answer}");
        let message = answer["error"].as_str().expect("error");
        assert!(message.contains(needle), "{route}: {message}");
        server.healthy();
    }
    drop(server);

    let (train, dev) = (dir.path().join("train.conll"), dir.path().join("dev.conll"));
    write_conll(&train, 64, 1);
    write_conll(&dev, 8, 2);
    let config = task_config(
        dir.path(),
        "ner",
        "token-classification",
        (&train, &dev),
        "max_length = 24",
        "epochs = 8\nbatch_size = 8",
    );
    ok(&["finetune", "--config", config.to_str().expect("utf8")]);
    let tagger = dir.path().join("ner/final");
    let texts = ["w40 w7 w41 w15 w16", "w5 w50  w6", "w15 w16 w42 w8 w44 w45"];
    let lines: Vec<Value> = texts.iter().map(|t| json!({"text": t})).collect();
    let want = predicted(dir.path(), &tagger, &lines);
    let entities: usize = want
        .iter()
        .map(|w| w["entities"].as_array().map_or(0, Vec::len))
        .sum();
    assert!(entities > 0, "the tagger finds entities: {want:?}");
    let server = Server::start(&tagger, &[]);
    let (status, got) = server.post("/ner", &json!({"inputs": texts}));
    assert_eq!(status, 200, "{got}");
    same_json(&got, &json!(want), "/ner");
    let (_, one) = server.post("/ner", &json!({"inputs": texts[0]}));
    same_json(&one, &want[0], "/ner one text");
    drop(server);

    let (train, dev) = (dir.path().join("train.json"), dir.path().join("dev.json"));
    write_squad(&train, 48, 3);
    write_squad(&dev, 8, 4);
    let config = task_config(
        dir.path(),
        "qa",
        "question-answering",
        (&train, &dev),
        "max_length = 12\ndoc_stride = 4",
        "epochs = 4\nbatch_size = 8",
    );
    ok(&["finetune", "--config", config.to_str().expect("utf8")]);
    let reader = dir.path().join("qa/final");
    // 12-token windows: the first context (14 tokens with the question) makes two.
    let questions = [
        ("w61 w62", "w41 w42 w9 w43 w44 w45 w46 w47 w48"),
        ("w61 w62", "w50 w7 w51"),
    ];
    let lines: Vec<Value> = questions
        .iter()
        .map(|(q, c)| json!({"question": q, "context": c}))
        .collect();
    let want = predicted_with(
        dir.path(),
        &reader,
        &lines,
        &["--max-length", "12", "--top-k", "3"],
    );
    let server = Server::start(&reader, &["--max-input-length", "12"]);
    let (status, got) = server.post(
        "/qa",
        &json!({
            "question": questions.iter().map(|q| q.0).collect::<Vec<_>>(),
            "context": questions.iter().map(|q| q.1).collect::<Vec<_>>(),
            "top_k": 3,
        }),
    );
    assert_eq!(status, 200, "{got}");
    same_json(&got, &json!(want), "/qa");
    assert!(
        want[0]["top_k"].as_array().expect("top_k").len() > 1,
        "{want:?}"
    );
    let (_, one) = server.post(
        "/qa",
        &json!({"question": "w61 w62", "context": questions[0].1}),
    );
    let mut best = want[0].clone();
    best.as_object_mut().expect("object").remove("top_k");
    same_json(&one, &best, "/qa one question");
    let (status, _) = server.post("/qa", &json!({"question": ["a", "b"], "context": ["c"]}));
    assert_eq!(status, 422);
    server.healthy();
}
