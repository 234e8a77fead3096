//! Models by name against a stand-in Hugging Face Hub on 127.0.0.1 (never the internet):
//! first run downloads, second run is served from the cache with the server stopped,
//! `HF_HUB_OFFLINE=1`, revision pins, 404, gated repos, truncated transfers, non-BERT repos and
//! an unreachable endpoint.

mod common;
use common::*;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use sha2::{Digest, Sha256};

const MAIN: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const V1: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

/// repo → revision (branch, tag or commit) → (commit, files).
type Repos = HashMap<String, HashMap<String, (String, HashMap<String, Vec<u8>>)>>;

struct StandInHub {
    port: u16,
    stop: Arc<AtomicBool>,
    requests: Arc<AtomicUsize>,
    truncate: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

fn tiny_repo_files(config_patch: Option<(&str, &str)>) -> HashMap<String, Vec<u8>> {
    let fixture = root().join("tests/fixtures/tiny-bert/BertModel");
    let mut config = std::fs::read_to_string(fixture.join("config.json")).expect("config");
    if let Some((from, to)) = config_patch {
        config = config.replace(from, to);
    }
    let vocab: Vec<String> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        .iter()
        .map(|s| s.to_string())
        .chain((5..64).map(|i| format!("w{i}")))
        .collect();
    HashMap::from([
        ("config.json".to_string(), config.into_bytes()),
        (
            "model.safetensors".to_string(),
            std::fs::read(fixture.join("model.safetensors")).expect("weights"),
        ),
        (
            "vocab.txt".to_string(),
            (vocab.join("\n") + "\n").into_bytes(),
        ),
        (
            "tokenizer_config.json".to_string(),
            b"{\"do_lower_case\": true}".to_vec(),
        ),
    ])
}

fn repos() -> Repos {
    let main = tiny_repo_files(None);
    let v1 = tiny_repo_files(Some((
        "\"hidden_act\": \"gelu\"",
        "\"hidden_act\": \"gelu\", \"revision_marker\": \"v1\"",
    )));
    let mut gpt = tiny_repo_files(None);
    gpt.insert(
        "config.json".into(),
        br#"{"model_type": "gpt2", "n_layer": 2}"#.to_vec(),
    );
    let mut repos: Repos = HashMap::new();
    let tiny = repos.entry("test-org/tiny-bert".into()).or_default();
    tiny.insert("main".into(), (MAIN.into(), main.clone()));
    tiny.insert(MAIN.into(), (MAIN.into(), main.clone()));
    tiny.insert("v1".into(), (V1.into(), v1.clone()));
    tiny.insert(V1.into(), (V1.into(), v1));
    for (name, files) in [
        ("test-org/gated", main.clone()),
        ("test-org/truncated", main.clone()),
        ("test-org/gpt", gpt),
    ] {
        repos
            .entry(name.into())
            .or_default()
            .insert("main".into(), (MAIN.into(), files));
    }
    repos
}

impl StandInHub {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicUsize::new(0));
        let truncate = Arc::new(AtomicBool::new(true));
        let repos = Arc::new(Mutex::new(repos()));
        let (s, r, t) = (stop.clone(), requests.clone(), truncate.clone());
        let thread = std::thread::spawn(move || {
            // Bounded: the server stops when told, or after 2 minutes at most.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
            while !s.load(Ordering::SeqCst) && std::time::Instant::now() < deadline {
                match listener.accept() {
                    Ok((stream, _)) => {
                        r.fetch_add(1, Ordering::SeqCst);
                        let repos = repos.lock().expect("lock").clone();
                        let _ = serve(stream, &repos, t.load(Ordering::SeqCst));
                    }
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
                }
            }
        });
        Self {
            port,
            stop,
            requests,
            truncate,
            thread: Some(thread),
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for StandInHub {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// One request per connection (`Connection: close`), Hub URL layout
/// `/{repo}/resolve/{revision}/{file}`, with the headers hf-hub reads.
fn serve(mut stream: TcpStream, repos: &Repos, truncate: bool) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut headers = HashMap::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .trim_start_matches('/')
        .to_string();
    let reply = |stream: &mut TcpStream,
                 status: &str,
                 extra: &[(String, String)],
                 body: &[u8],
                 declared: usize| {
        let mut head =
            format!("HTTP/1.1 {status}\r\nConnection: close\r\nContent-Length: {declared}\r\n");
        for (k, v) in extra {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes())?;
        stream.write_all(body)?;
        stream.flush()
    };
    let Some((repo, rest)) = path.split_once("/resolve/") else {
        return reply(&mut stream, "404 Not Found", &[], b"", 0);
    };
    let Some((revision, file)) = rest.split_once('/') else {
        return reply(&mut stream, "404 Not Found", &[], b"", 0);
    };
    let Some(revisions) = repos.get(repo) else {
        let h = [("X-Error-Code".to_string(), "RepositoryNotFound".to_string())];
        return reply(
            &mut stream,
            "401 Unauthorized",
            &h,
            b"Repository not found",
            20,
        );
    };
    if repo == "test-org/gated"
        && headers.get("authorization").map(String::as_str) != Some("Bearer secret")
    {
        let h = [("X-Error-Code".to_string(), "GatedRepo".to_string())];
        return reply(&mut stream, "403 Forbidden", &h, b"gated", 5);
    }
    let Some((commit, files)) = revisions.get(revision) else {
        let h = [("X-Error-Code".to_string(), "RevisionNotFound".to_string())];
        return reply(&mut stream, "404 Not Found", &h, b"", 0);
    };
    let Some(content) = files.get(file) else {
        let h = [("X-Error-Code".to_string(), "EntryNotFound".to_string())];
        return reply(&mut stream, "404 Not Found", &h, b"", 0);
    };
    let len = content.len();
    let (start, end) = match headers.get("range").and_then(|r| r.strip_prefix("bytes=")) {
        Some(range) => {
            let (a, b) = range.split_once('-').unwrap_or((range, ""));
            let a: usize = a.parse().unwrap_or(0);
            let b: usize = b.parse().map(|b: usize| b + 1).unwrap_or(len).min(len);
            (a.min(len), b)
        }
        None => (0, len),
    };
    let body = &content[start..end];
    let extra = vec![
        (
            "ETag".to_string(),
            format!("\"{:x}\"", Sha256::digest(content)),
        ),
        ("X-Repo-Commit".to_string(), commit.clone()),
        (
            "Content-Range".to_string(),
            format!("bytes {start}-{}/{len}", end.saturating_sub(1)),
        ),
    ];
    // The truncated repo sends half of a large body, then closes the connection.
    if truncate && repo == "test-org/truncated" && file == "model.safetensors" && body.len() > 1 {
        return reply(
            &mut stream,
            "206 Partial Content",
            &extra,
            &body[..body.len() / 2],
            body.len(),
        );
    }
    reply(&mut stream, "206 Partial Content", &extra, body, body.len())
}

struct Env {
    _dir: tempfile::TempDir,
    cache: PathBuf,
    home: PathBuf,
}

impl Env {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = dir.path().join("hub-cache");
        let home = dir.path().join("hf-home");
        Self {
            _dir: dir,
            cache,
            home,
        }
    }

    fn run(&self, endpoint: &str, extra_env: &[(&str, &str)], args: &[&str]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_bert"));
        cmd.args(args)
            .env("HF_ENDPOINT", endpoint)
            .env("HF_HUB_CACHE", &self.cache)
            .env("HF_HOME", &self.home)
            .env_remove("HF_TOKEN")
            .env_remove("HF_HUB_OFFLINE");
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        cmd.output().expect("run bert")
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

#[test]
fn download_cache_offline_and_revisions() {
    let mut hub = StandInHub::start();
    let env = Env::new();
    let ep = hub.endpoint();
    let first = env.run(&ep, &[], &["download", "test-org/tiny-bert"]);
    assert!(first.status.success(), "{}", stderr(&first));
    let snapshot = PathBuf::from(stdout(&first));
    assert_eq!(
        snapshot,
        env.cache
            .join("models--test-org--tiny-bert/snapshots")
            .join(MAIN)
    );
    for f in [
        "config.json",
        "model.safetensors",
        "vocab.txt",
        "tokenizer_config.json",
    ] {
        assert!(snapshot.join(f).is_file(), "{f}");
    }
    assert_eq!(
        std::fs::read_to_string(env.cache.join("models--test-org--tiny-bert/refs/main"))
            .expect("ref")
            .trim(),
        MAIN
    );
    // 404s of optional files are remembered as huggingface_hub does.
    assert!(
        env.cache
            .join("models--test-org--tiny-bert/.no_exist")
            .join(MAIN)
            .join("tokenizer.json")
            .exists()
    );

    // A model id works wherever a model directory does.
    let input = env.home.join("ids.jsonl");
    std::fs::create_dir_all(&env.home).expect("home");
    std::fs::write(&input, "{\"input_ids\": [2, 11, 17, 3]}\n").expect("input");
    let out = env.home.join("out.safetensors");
    let encode = |endpoint: &str, extra: &[(&str, &str)]| {
        env.run(
            endpoint,
            extra,
            &[
                "encode",
                "--model",
                "test-org/tiny-bert",
                "--input",
                input.to_str().expect("utf8"),
                "--output",
                out.to_str().expect("utf8"),
            ],
        )
    };
    let o = encode(&ep, &[]);
    assert!(o.status.success(), "{}", stderr(&o));

    // Revision pin: a tag resolves to its own commit and snapshot.
    let pinned = env.run(&ep, &[], &["download", "test-org/tiny-bert@v1"]);
    assert!(pinned.status.success(), "{}", stderr(&pinned));
    let pinned_dir = PathBuf::from(stdout(&pinned));
    assert!(pinned_dir.ends_with(V1));
    let config = std::fs::read_to_string(pinned_dir.join("config.json")).expect("config");
    assert!(config.contains("revision_marker"));
    let copy = env.home.join("copy");
    let c = env.run(
        &ep,
        &[],
        &[
            "download",
            "test-org/tiny-bert",
            "--revision",
            "v1",
            "--to",
            copy.to_str().expect("utf8"),
        ],
    );
    assert!(c.status.success(), "{}", stderr(&c));
    assert!(
        !std::fs::symlink_metadata(copy.join("model.safetensors"))
            .expect("copied")
            .file_type()
            .is_symlink()
    );

    // Second run with the server gone: everything comes from the cache.
    let served = hub.requests.load(Ordering::SeqCst);
    assert!(served > 0);
    hub.shutdown();
    let o = encode(&ep, &[]);
    assert!(
        o.status.success(),
        "cache after the server stopped: {}",
        stderr(&o)
    );
    let o = encode("http://127.0.0.1:1", &[("HF_HUB_OFFLINE", "1")]);
    assert!(o.status.success(), "offline: {}", stderr(&o));
    let o = env.run(
        &ep,
        &[("HF_HUB_OFFLINE", "1")],
        &["download", &format!("test-org/tiny-bert@{V1}")],
    );
    assert!(
        o.status.success(),
        "a commit hash pins offline too: {}",
        stderr(&o)
    );

    // Not cached and offline: says which file is missing and what to do.
    let o = env.run(
        &ep,
        &[("HF_HUB_OFFLINE", "1")],
        &["download", "test-org/never-seen"],
    );
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("config.json") && e.contains("HF_HUB_OFFLINE") && e.lines().count() == 1,
        "{e}"
    );
    // Not cached and no network: same clarity.
    let o = env.run(
        "http://127.0.0.1:1",
        &[],
        &["download", "test-org/never-seen"],
    );
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("cannot download") && e.contains("HF_HUB_OFFLINE"),
        "{e}"
    );
}

#[test]
fn hub_errors_are_clear_and_leave_no_corrupt_cache() {
    let hub = StandInHub::start();
    let env = Env::new();
    let ep = hub.endpoint();
    let o = env.run(&ep, &[], &["download", "test-org/does-not-exist"]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("test-org/does-not-exist not found"), "{e}");
    let o = env.run(&ep, &[], &["download", "test-org/tiny-bert@no-such-branch"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("not found"), "{}", stderr(&o));

    let o = env.run(&ep, &[], &["download", "test-org/gated"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("HF_TOKEN"), "{}", stderr(&o));
    let o = env.run(
        &ep,
        &[("HF_TOKEN", "secret")],
        &["download", "test-org/gated"],
    );
    assert!(o.status.success(), "{}", stderr(&o));

    let o = env.run(&ep, &[], &["download", "test-org/gpt"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("not a BERT-family model"),
        "{}",
        stderr(&o)
    );

    // A transfer cut in the middle fails clearly and leaves no file in the snapshot …
    let o = env.run(&ep, &[], &["download", "test-org/truncated"]);
    assert!(!o.status.success(), "a truncated transfer must fail");
    let snapshot = env
        .cache
        .join("models--test-org--truncated/snapshots")
        .join(MAIN);
    assert!(
        !snapshot.join("model.safetensors").exists(),
        "no corrupt cache entry"
    );
    // … and the next run (the server healthy again) completes it.
    hub.truncate.store(false, Ordering::SeqCst);
    let o = env.run(&ep, &[], &["download", "test-org/truncated"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let bytes = std::fs::read(snapshot.join("model.safetensors")).expect("complete file");
    let original =
        std::fs::read(root().join("tests/fixtures/tiny-bert/BertModel/model.safetensors"))
            .expect("fixture");
    assert_eq!(bytes, original);
}
