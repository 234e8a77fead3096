//! Prepared pretraining corpora: text tokenized once into binary, memory-mapped shards.
//!
//! Input is google-research/bert's format: UTF-8 text, one sentence per line, a blank line
//! between documents. [`prepare`] writes one shard per input file into a directory:
//!
//! ```text
//! prepared/
//!   index.json              format, tokenizer hash, and per shard: source path, size and
//!                           modification time, token/sentence/document counts
//!   00000-<stem>.tokens     u32 little-endian token ids, all sentences back to back
//!   00000-<stem>.sentences  u64 LE: end offset (in tokens) of each sentence
//!   00000-<stem>.documents  u64 LE: end offset (in sentences) of each document
//! ```
//!
//! Preparation streams each file in chunks of lines (bounded memory), tokenizes a chunk on all
//! cores (rayon), writes each shard under a temporary name and renames it, and rewrites the
//! index after each shard: a re-run skips sources whose size and modification time are
//! unchanged (incremental), and an interrupted run loses at most the shard in progress.
//! A prepared directory records the SHA-256 of its tokenizer and refuses another one. Opening it
//! checks every shard against the index: file sizes, and boundaries that rise strictly and end
//! at the token and sentence counts, so a corrupted shard is an error naming its file, not a
//! panic while reading.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::DataError;
use crate::tokenizer::BertTokenizer;

const FORMAT: &str = "bert-rs-pretraining-shards";
const VERSION: u32 = 1;

/// `index.json` of a prepared directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardIndex {
    /// Always `bert-rs-pretraining-shards`.
    pub format: String,
    /// Format version.
    pub version: u32,
    /// SHA-256 of the tokenizer (its `tokenizer.json` serialisation).
    pub tokenizer_sha256: String,
    /// Vocabulary size of that tokenizer.
    pub vocab_size: usize,
    /// Shards in source order.
    pub shards: Vec<ShardInfo>,
}

/// One shard of a prepared corpus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardInfo {
    /// File name stem of the shard's three files.
    pub name: String,
    /// The text file it was made from.
    pub source: PathBuf,
    /// Source size in bytes when prepared.
    pub source_bytes: u64,
    /// Source modification time (nanoseconds since the epoch) when prepared.
    pub source_modified_ns: u128,
    /// Number of tokens.
    pub tokens: u64,
    /// Number of sentences.
    pub sentences: u64,
    /// Number of documents.
    pub documents: u64,
}

/// What [`prepare`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PrepareReport {
    /// Shards written by this run.
    pub written: usize,
    /// Shards kept from an earlier run (source unchanged).
    pub reused: usize,
    /// Bytes of text tokenized by this run.
    pub bytes: u64,
    /// Totals over the whole prepared corpus.
    pub tokens: u64,
    /// Documents over the whole prepared corpus.
    pub documents: u64,
}

/// SHA-256 (hex) of a tokenizer's serialisation.
pub fn tokenizer_hash(tokenizer: &BertTokenizer) -> Result<String, DataError> {
    let json = tokenizer
        .inner()
        .to_string(false)
        .map_err(|e| DataError::Tokenizer(e.to_string()))?;
    Ok(format!("{:x}", Sha256::digest(json.as_bytes())))
}

/// Expands file names and globs, in the order given (each glob sorted); an input that matches
/// nothing is an error.
pub fn expand_inputs(inputs: &[String]) -> Result<Vec<PathBuf>, DataError> {
    let mut files = Vec::new();
    for input in inputs {
        let has_glob = input.contains(['*', '?', '[']);
        if !has_glob {
            let path = PathBuf::from(input);
            if !path.is_file() {
                return Err(DataError::Encoding(format!(
                    "input file {input} does not exist"
                )));
            }
            files.push(path);
            continue;
        }
        let mut matched: Vec<PathBuf> = glob::glob(input)
            .map_err(|e| DataError::Encoding(format!("bad glob {input}: {e}")))?
            .filter_map(Result::ok)
            .filter(|p| p.is_file())
            .collect();
        if matched.is_empty() {
            return Err(DataError::Encoding(format!("{input} matches no file")));
        }
        matched.sort();
        files.extend(matched);
    }
    if files.is_empty() {
        return Err(DataError::Encoding("no input files given".into()));
    }
    Ok(files)
}

fn modified_ns(meta: &std::fs::Metadata) -> u128 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos())
}

pub(crate) fn read_index(dir: &Path) -> Result<Option<ShardIndex>, DataError> {
    let path = dir.join("index.json");
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| DataError::io(&path, e))?;
    let index: ShardIndex = serde_json::from_str(&text).map_err(|e| DataError::Line {
        path: path.clone(),
        line: e.line(),
        message: format!("not a prepared-corpus index: {e}"),
    })?;
    if index.format != FORMAT || index.version != VERSION {
        return Err(DataError::Encoding(format!(
            "{} is format {} v{}, expected {FORMAT} v{VERSION}",
            path.display(),
            index.format,
            index.version
        )));
    }
    Ok(Some(index))
}

fn write_index(dir: &Path, index: &ShardIndex) -> Result<(), DataError> {
    let path = dir.join("index.json");
    let tmp = dir.join("index.json.tmp");
    let text =
        serde_json::to_string_pretty(index).map_err(|e| DataError::Encoding(e.to_string()))?;
    std::fs::write(&tmp, text).map_err(|e| DataError::io(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| DataError::io(&path, e))
}

struct ShardWriter {
    tokens: BufWriter<File>,
    sentences: BufWriter<File>,
    documents: BufWriter<File>,
    paths: [PathBuf; 3],
    n_tokens: u64,
    n_sentences: u64,
    n_documents: u64,
    sentences_in_doc: u64,
}

impl ShardWriter {
    fn create(dir: &Path, name: &str) -> Result<Self, DataError> {
        let paths =
            ["tokens", "sentences", "documents"].map(|ext| dir.join(format!("{name}.{ext}.tmp")));
        let open = |p: &PathBuf| {
            File::create(p)
                .map(BufWriter::new)
                .map_err(|e| DataError::io(p, e))
        };
        Ok(Self {
            tokens: open(&paths[0])?,
            sentences: open(&paths[1])?,
            documents: open(&paths[2])?,
            paths,
            n_tokens: 0,
            n_sentences: 0,
            n_documents: 0,
            sentences_in_doc: 0,
        })
    }

    fn sentence(&mut self, ids: &[u32]) -> std::io::Result<()> {
        for id in ids {
            self.tokens.write_all(&id.to_le_bytes())?;
        }
        self.n_tokens += ids.len() as u64;
        self.n_sentences += 1;
        self.sentences_in_doc += 1;
        self.sentences.write_all(&self.n_tokens.to_le_bytes())
    }

    fn end_document(&mut self) -> std::io::Result<()> {
        if self.sentences_in_doc == 0 {
            return Ok(());
        }
        self.sentences_in_doc = 0;
        self.n_documents += 1;
        self.documents.write_all(&self.n_sentences.to_le_bytes())
    }

    fn finish(mut self) -> Result<(u64, u64, u64), DataError> {
        let fail = |p: &Path, e| DataError::io(p, e);
        self.end_document().map_err(|e| fail(&self.paths[0], e))?;
        for (w, p) in [
            (&mut self.tokens, &self.paths[0]),
            (&mut self.sentences, &self.paths[1]),
            (&mut self.documents, &self.paths[2]),
        ] {
            w.flush().map_err(|e| fail(p, e))?;
        }
        drop((self.tokens, self.sentences, self.documents));
        for tmp in &self.paths {
            let done = tmp.with_extension("");
            std::fs::rename(tmp, &done).map_err(|e| fail(&done, e))?;
        }
        Ok((self.n_tokens, self.n_sentences, self.n_documents))
    }
}

/// Options of [`prepare`].
#[derive(Debug, Clone)]
pub struct PrepareOptions {
    /// Text files or globs.
    pub inputs: Vec<String>,
    /// Output directory.
    pub output: PathBuf,
    /// Lines tokenized per parallel chunk (bounds memory).
    pub chunk_lines: usize,
    /// Show a progress bar on a terminal.
    pub progress: bool,
}

/// Tokenizes a corpus into shards (see the module docs).
pub fn prepare(
    options: &PrepareOptions,
    tokenizer: &BertTokenizer,
) -> Result<PrepareReport, DataError> {
    let files = expand_inputs(&options.inputs)?;
    let dir = &options.output;
    std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    let hash = tokenizer_hash(tokenizer)?;
    let previous = read_index(dir)?;
    if let Some(prev) = &previous
        && prev.tokenizer_sha256 != hash
    {
        return Err(DataError::Tokenizer(format!(
            "{} was prepared with another tokenizer (sha256 {}); use a new output directory",
            dir.display(),
            prev.tokenizer_sha256
        )));
    }
    let old: BTreeMap<PathBuf, ShardInfo> = previous
        .map(|p| {
            p.shards
                .into_iter()
                .map(|s| (s.source.clone(), s))
                .collect()
        })
        .unwrap_or_default();
    let total_bytes: u64 = files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    let bar = if options.progress {
        indicatif::ProgressBar::new(total_bytes)
    } else {
        indicatif::ProgressBar::hidden()
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "preparing [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta})",
    ) {
        bar.set_style(style);
    }
    let mut index = ShardIndex {
        format: FORMAT.into(),
        version: VERSION,
        tokenizer_sha256: hash,
        vocab_size: tokenizer.vocab_size(),
        shards: Vec::new(),
    };
    let mut report = PrepareReport::default();
    for (i, file) in files.iter().enumerate() {
        let source = std::fs::canonicalize(file).map_err(|e| DataError::io(file, e))?;
        let meta = std::fs::metadata(&source).map_err(|e| DataError::io(&source, e))?;
        let (bytes, modified) = (meta.len(), modified_ns(&meta));
        let stem: String = source
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("shard")
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let name = format!("{i:05}-{stem}");
        if let Some(prev) = old.get(&source)
            && prev.source_bytes == bytes
            && prev.source_modified_ns == modified
            && prev.name == name
            && ["tokens", "sentences", "documents"]
                .iter()
                .all(|ext| dir.join(format!("{name}.{ext}")).is_file())
        {
            report.reused += 1;
            index.shards.push(prev.clone());
            bar.inc(bytes);
            continue;
        }
        let (tokens, sentences, documents) =
            tokenize_file(&source, dir, &name, tokenizer, options.chunk_lines, &bar)?;
        report.written += 1;
        report.bytes += bytes;
        index.shards.push(ShardInfo {
            name,
            source,
            source_bytes: bytes,
            source_modified_ns: modified,
            tokens,
            sentences,
            documents,
        });
        write_index(dir, &index)?;
    }
    bar.finish_and_clear();
    write_index(dir, &index)?;
    report.tokens = index.shards.iter().map(|s| s.tokens).sum();
    report.documents = index.shards.iter().map(|s| s.documents).sum();
    if report.documents == 0 {
        return Err(DataError::Encoding(format!(
            "the corpus is empty: no sentence in {} input file(s)",
            files.len()
        )));
    }
    Ok(report)
}

fn tokenize_file(
    source: &Path,
    dir: &Path,
    name: &str,
    tokenizer: &BertTokenizer,
    chunk_lines: usize,
    bar: &indicatif::ProgressBar,
) -> Result<(u64, u64, u64), DataError> {
    let file = File::open(source).map_err(|e| DataError::io(source, e))?;
    let mut reader = BufReader::new(file);
    let mut writer = ShardWriter::create(dir, name)?;
    let mut chunk: Vec<String> = Vec::with_capacity(chunk_lines);
    let mut line_number = 0usize;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(|e| DataError::io(source, e))?;
        if n > 0 {
            line_number += 1;
            let line =
                String::from_utf8(std::mem::take(&mut buf)).map_err(|_| DataError::Line {
                    path: source.to_path_buf(),
                    line: line_number,
                    message: "not valid UTF-8".into(),
                })?;
            bar.inc(n as u64);
            chunk.push(line);
        }
        if chunk.len() >= chunk_lines.max(1) || (n == 0 && !chunk.is_empty()) {
            write_chunk(&mut writer, &chunk, tokenizer, source)?;
            chunk.clear();
        }
        if n == 0 {
            break;
        }
    }
    writer.finish()
}

fn write_chunk(
    writer: &mut ShardWriter,
    lines: &[String],
    tokenizer: &BertTokenizer,
    source: &Path,
) -> Result<(), DataError> {
    let encoded: Vec<Option<Vec<u32>>> = lines
        .par_iter()
        .map(|line| {
            let line = line.trim();
            if line.is_empty() {
                return Ok(None);
            }
            tokenizer
                .inner()
                .encode(line, false)
                .map(|e| Some(e.get_ids().to_vec()))
                .map_err(|e| DataError::Encoding(format!("{}: {e}", source.display())))
        })
        .collect::<Result<_, _>>()?;
    let io = |e| DataError::io(source, e);
    for ids in encoded {
        match ids {
            None => writer.end_document().map_err(io)?,
            // A line without tokens (only control characters, say) is skipped, as google's
            // script does.
            Some(ids) if ids.is_empty() => {}
            Some(ids) => writer.sentence(&ids).map_err(io)?,
        }
    }
    Ok(())
}

pub use super::prepared::{PreparedCorpus, read_documents};

#[cfg(test)]
#[path = "shards_tests.rs"]
mod tests;
