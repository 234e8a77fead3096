//! Models by name from the Hugging Face Hub, through the `hf-hub` crate and the cache layout of
//! Python's `huggingface_hub` (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`;
//! `models--org--name/{blobs,refs,snapshots/<commit>}`), so an existing Python cache is reused
//! and a model downloaded once works offline.
//!
//! - `HF_ENDPOINT` points at a mirror; `HF_TOKEN` (or the token file in `HF_HOME`) is sent for
//!   private and gated repos; `HF_HUB_OFFLINE=1` never touches the network.
//! - Only what a BERT needs is fetched: `config.json`, `model.safetensors` (or
//!   `pytorch_model.bin` when the repo has no safetensors) and the tokenizer files.
//! - Downloads go to a `.part` file beside the blob and are renamed when complete (hf-hub), and
//!   an interrupted download resumes from the `.part` on the next run; a finished file whose size
//!   disagrees with the server's is removed from the cache and reported.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use hf_hub::api::sync::{ApiBuilder, ApiError};
use hf_hub::{Cache, Repo, RepoType};

const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "vocab.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
];

/// A Hub model id with an optional revision: `bert-base-uncased`, `org/name@revision`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelId {
    /// `name` or `org/name`.
    pub repo: String,
    /// Branch, tag or commit (`main` when not given).
    pub revision: String,
}

impl ModelId {
    /// Parses `name`, `org/name`, with `@revision`; `None` when `s` cannot be a repo id.
    pub fn parse(s: &str) -> Option<Self> {
        let (repo, revision) = match s.split_once('@') {
            Some((r, rev)) if !rev.is_empty() => (r, rev.to_string()),
            Some(_) => return None,
            None => (s, "main".to_string()),
        };
        let parts: Vec<&str> = repo.split('/').collect();
        let valid_part = |p: &&str| {
            !p.is_empty()
                && !p.starts_with('.')
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        (parts.len() <= 2 && parts.iter().all(valid_part)).then(|| Self {
            repo: repo.to_string(),
            revision,
        })
    }
}

fn env_flag(name: &str) -> bool {
    std::env::var(name)
        .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
        .unwrap_or(false)
}

/// The cache directory in use.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("HF_HUB_CACHE") {
        return PathBuf::from(dir);
    }
    Cache::from_env().path().clone()
}

fn endpoint() -> String {
    std::env::var("HF_ENDPOINT")
        .ok()
        .filter(|e| !e.is_empty())
        .map(|e| e.trim_end_matches('/').to_string())
        .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string())
}

/// Resolves a `--model` argument: an existing directory as is, else a Hub id downloaded (or
/// found in the cache). Returns the directory holding config.json, weights and tokenizer files.
pub fn resolve_model(arg: &Path) -> Result<PathBuf> {
    if arg.is_dir() {
        return Ok(arg.to_path_buf());
    }
    let text = arg.to_string_lossy();
    let looks_like_path = arg.is_absolute()
        || text.starts_with('.')
        || text.starts_with('~')
        || text.matches('/').count() > 1;
    match ModelId::parse(&text).filter(|_| !looks_like_path) {
        Some(id) => fetch(&id),
        None => bail!("model directory {} does not exist", arg.display()),
    }
}

/// Why a file could not be fetched.
enum Miss {
    /// The server says it does not exist (404).
    NotFound,
    /// The server could not be reached.
    Unreachable(anyhow::Error),
    /// Anything else, with a message for the user.
    Fatal(anyhow::Error),
}

fn describe(id: &ModelId, file: &str, err: ApiError) -> Miss {
    let what = format!("{}@{}", id.repo, id.revision);
    match err {
        ApiError::RequestError(e) => match *e {
            ureq::Error::Status(code, response)
                if response.header("x-error-code") == Some("RepositoryNotFound") =>
            {
                Miss::Fatal(anyhow!(
                    "{} not found on {} ({code}): check the model id, or set HF_TOKEN if the repo is private",
                    id.repo,
                    endpoint()
                ))
            }
            ureq::Error::Status(code, response)
                if response.header("x-error-code") == Some("RevisionNotFound") =>
            {
                Miss::Fatal(anyhow!(
                    "revision {} of {} not found on {} ({code})",
                    id.revision,
                    id.repo,
                    endpoint()
                ))
            }
            ureq::Error::Status(404, _) => Miss::NotFound,
            ureq::Error::Status(code @ (401 | 403), _) => Miss::Fatal(anyhow!(
                "{what}: access denied ({code}) for {file}: the repo is gated or private; set HF_TOKEN to a token with access"
            )),
            ureq::Error::Status(code, _) => {
                Miss::Fatal(anyhow!("{what}: the Hub answered {code} for {file}"))
            }
            other => Miss::Unreachable(anyhow!(
                "cannot download {file} of {what} from {} ({other}) and it is not in the cache {}; work offline with HF_HUB_OFFLINE=1 once it is cached, or pass a local directory",
                endpoint(),
                cache_dir().display()
            )),
        },
        other => Miss::Fatal(anyhow!("{what}: download of {file} failed: {other}")),
    }
}

/// Downloads (or finds in the cache) the files of a BERT model and returns its snapshot folder.
pub fn fetch(id: &ModelId) -> Result<PathBuf> {
    let cache = Cache::new(cache_dir());
    let repo = Repo::with_revision(id.repo.clone(), RepoType::Model, id.revision.clone());
    let offline = env_flag("HF_HUB_OFFLINE");
    let api = if offline {
        None
    } else {
        let token = std::env::var("HF_TOKEN")
            .ok()
            .filter(|t| !t.is_empty())
            .or_else(|| cache.token());
        Some(
            ApiBuilder::from_cache(cache.clone())
                .with_endpoint(endpoint())
                .with_token(token)
                .with_progress(std::io::stderr().is_terminal())
                .build()
                .context("cannot set up the Hub client")?
                .repo(repo.clone()),
        )
    };
    let cached = |file: &str| -> Option<PathBuf> {
        let repo_cache = cache.repo(repo.clone());
        repo_cache.get(file).or_else(|| {
            // A commit hash as revision has no ref: look in its snapshot directly.
            let is_commit =
                id.revision.len() == 40 && id.revision.chars().all(|c| c.is_ascii_hexdigit());
            let path = cache_dir()
                .join(format!("models--{}", id.repo.replace('/', "--")))
                .join("snapshots")
                .join(&id.revision)
                .join(file);
            (is_commit && path.is_file()).then_some(path)
        })
    };
    let get = |file: &str| -> Result<Option<PathBuf>, Miss> {
        if let Some(path) = cached(file) {
            return Ok(Some(path));
        }
        match &api {
            None => Ok(None),
            Some(api) => match api.download(file) {
                Ok(path) => Ok(Some(path)),
                Err(e) => match describe(id, file, e) {
                    Miss::NotFound => Ok(None),
                    fatal => Err(fatal),
                },
            },
        }
    };
    // Optional files: a 404 is remembered as Python's huggingface_hub does
    // (`.no_exist/<commit>/<file>`), and an unreachable server is not an error once the
    // required files are cached.
    let repo_dir = cache_dir().join(format!("models--{}", id.repo.replace('/', "--")));
    let commit = || {
        std::fs::read_to_string(repo_dir.join("refs").join(&id.revision))
            .ok()
            .map(|c| c.trim().to_string())
    };
    let no_exist = |file: &str| commit().map(|c| repo_dir.join(".no_exist").join(c).join(file));
    let get_optional = |file: &str| -> Result<Option<PathBuf>> {
        if no_exist(file).is_some_and(|p| p.exists()) {
            return Ok(None);
        }
        match get(file) {
            Ok(Some(p)) => Ok(Some(p)),
            Ok(None) => {
                if api.is_some()
                    && let Some(marker) = no_exist(file)
                {
                    if let Some(parent) = marker.parent() {
                        let _ = std::fs::create_dir_all(parent);
                    }
                    let _ = std::fs::write(&marker, b"");
                }
                Ok(None)
            }
            Err(Miss::NotFound | Miss::Unreachable(_)) => Ok(None),
            Err(Miss::Fatal(e)) => Err(e),
        }
    };
    let fatal = |m: Miss| match m {
        Miss::Fatal(e) | Miss::Unreachable(e) => e,
        Miss::NotFound => anyhow!("not found"),
    };
    let missing = |file: &str| {
        if offline {
            anyhow!(
                "{file} of {}@{} is not in the cache {} and HF_HUB_OFFLINE is set; download it once online, or pass a local model directory",
                id.repo,
                id.revision,
                cache_dir().display()
            )
        } else {
            anyhow!(
                "{}@{} was not found on {} (404 for {file}): check the model id and revision",
                id.repo,
                id.revision,
                endpoint()
            )
        }
    };
    let config = get("config.json")
        .map_err(fatal)?
        .ok_or_else(|| missing("config.json"))?;
    let text = std::fs::read_to_string(&config)
        .with_context(|| format!("cannot read {}", config.display()))?;
    let value: serde_json::Value = serde_json::from_str(&text).with_context(|| {
        format!(
            "{}: config.json of {} is not JSON",
            config.display(),
            id.repo
        )
    })?;
    let model_type = value
        .get("model_type")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    if model_type != "bert" {
        bail!(
            "{} is not a BERT-family model (model_type {:?}); only BERT checkpoints are supported",
            id.repo,
            model_type
        );
    }
    let weights = match get_optional("model.safetensors")? {
        Some(p) => p,
        None => get("pytorch_model.bin")
            .map_err(fatal)?
            .ok_or_else(|| missing("model.safetensors (nor pytorch_model.bin)"))?,
    };
    verify_safetensors(&weights)?;
    let mut has_tokenizer = false;
    for file in TOKENIZER_FILES {
        let found = get_optional(file)?;
        has_tokenizer |= found.is_some() && matches!(*file, "tokenizer.json" | "vocab.txt");
    }
    if !has_tokenizer {
        eprintln!(
            "note: {} has no tokenizer.json or vocab.txt; text inputs will not work",
            id.repo
        );
    }
    config
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| anyhow!("bad cache path {}", config.display()))
}

/// A downloaded safetensors file must hold exactly the bytes its header announces; a short file
/// (a truncated transfer) is removed from the cache so the next run downloads it again.
fn verify_safetensors(path: &Path) -> Result<()> {
    if path.extension().is_none_or(|e| e != "safetensors") {
        return Ok(());
    }
    let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let bytes = std::fs::read(&real).with_context(|| format!("cannot read {}", real.display()))?;
    if let Err(e) = safetensors::SafeTensors::deserialize(&bytes) {
        let _ = std::fs::remove_file(path);
        let _ = std::fs::remove_file(&real);
        bail!(
            "{} is damaged ({e}); it was removed from the cache, run again to download it",
            path.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_model_ids() {
        assert_eq!(
            ModelId::parse("bert-base-uncased"),
            Some(ModelId {
                repo: "bert-base-uncased".into(),
                revision: "main".into()
            })
        );
        let id = ModelId::parse("sentence-transformers/all-MiniLM-L6-v2@v1.0").expect("id");
        assert_eq!(
            (id.repo.as_str(), id.revision.as_str()),
            ("sentence-transformers/all-MiniLM-L6-v2", "v1.0")
        );
        for bad in ["a/b/c", "org/", "x@", "../up", "with space", ""] {
            assert_eq!(ModelId::parse(bad), None, "{bad}");
        }
    }
}
