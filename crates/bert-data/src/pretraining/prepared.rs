//! Reading a prepared corpus (see [`super::shards`] for the format and its preparation): the
//! shards are memory-mapped, checked against the index on open, and served as documents.

use std::fs::File;
use std::path::{Path, PathBuf};

use super::shards::{ShardIndex, read_index, tokenizer_hash};
use crate::error::DataError;
use crate::pretraining::instances::Documents;
use crate::tokenizer::BertTokenizer;

/// A memory-mapped shard.
struct Shard {
    tokens: memmap2::Mmap,
    sentences: memmap2::Mmap,
    documents: memmap2::Mmap,
}

#[allow(unsafe_code)]
fn map(path: &Path) -> Result<memmap2::Mmap, DataError> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    // SAFETY: shard files are written once under a temporary name and renamed into place;
    // nothing in this project modifies them afterwards, so the mapping stays valid and
    // immutable while it lives. An outside process truncating the file would violate this.
    unsafe { memmap2::Mmap::map(&file) }.map_err(|e| DataError::io(path, e))
}

fn as_slice<'a, T: bytemuck::Pod>(bytes: &'a [u8], path: &Path) -> Result<&'a [T], DataError> {
    bytemuck::try_cast_slice(bytes).map_err(|e| DataError::CorruptShard {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Checks a boundary file: each entry is the end offset (in `unit`s) of one item, so the
/// entries rise strictly (the writer skips empty sentences and documents) from above 0 to
/// exactly `total`. Reading trusts these offsets to slice the level below.
fn check_ends(path: &Path, ends: &[u64], total: u64, unit: &str) -> Result<(), DataError> {
    let corrupt = |message: String| DataError::CorruptShard {
        path: path.to_path_buf(),
        message,
    };
    let mut previous = 0u64;
    for (k, &end) in ends.iter().enumerate() {
        if end <= previous || end > total {
            return Err(corrupt(format!(
                "entry {k} ends at {unit} {end}, outside ({previous}, {total}]: boundaries must \
                 rise strictly up to the {unit} count"
            )));
        }
        previous = end;
    }
    if previous != total {
        return Err(corrupt(format!(
            "the last entry ends at {unit} {previous}, but the shard has {total} {unit}s"
        )));
    }
    Ok(())
}

/// A prepared corpus, memory-mapped: documents are read from disk as they are used.
pub struct PreparedCorpus {
    index: ShardIndex,
    shards: Vec<Shard>,
    /// Cumulative document counts, for global document indices.
    doc_starts: Vec<usize>,
}

impl std::fmt::Debug for PreparedCorpus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedCorpus")
            .field("shards", &self.index.shards.len())
            .field("documents", &self.num_documents())
            .finish()
    }
}

#[cfg(not(target_endian = "little"))]
compile_error!("prepared shards are little-endian and read in place");

impl PreparedCorpus {
    /// Opens a prepared directory. With a tokenizer, refuses a corpus prepared with another one.
    pub fn open(
        dir: impl AsRef<Path>,
        tokenizer: Option<&BertTokenizer>,
    ) -> Result<Self, DataError> {
        let dir = dir.as_ref();
        let index = read_index(dir)?.ok_or_else(|| {
            DataError::Encoding(format!(
                "{} is not a prepared corpus (no index.json); run `bert data prepare`",
                dir.display()
            ))
        })?;
        if let Some(tok) = tokenizer {
            let hash = tokenizer_hash(tok)?;
            if hash != index.tokenizer_sha256 {
                return Err(DataError::Tokenizer(format!(
                    "{} was prepared with another tokenizer (sha256 {} here, {} there)",
                    dir.display(),
                    hash,
                    index.tokenizer_sha256
                )));
            }
        }
        let mut shards = Vec::with_capacity(index.shards.len());
        let mut doc_starts = vec![0usize];
        for info in &index.shards {
            let file = |ext: &str| dir.join(format!("{}.{ext}", info.name));
            let shard = Shard {
                tokens: map(&file("tokens"))?,
                sentences: map(&file("sentences"))?,
                documents: map(&file("documents"))?,
            };
            let expect = [
                (shard.tokens.len() as u64, info.tokens * 4, "tokens"),
                (
                    shard.sentences.len() as u64,
                    info.sentences * 8,
                    "sentences",
                ),
                (
                    shard.documents.len() as u64,
                    info.documents * 8,
                    "documents",
                ),
            ];
            for (found, want, what) in expect {
                if found != want {
                    return Err(DataError::CorruptShard {
                        path: file(what),
                        message: format!("{found} bytes, the index says {want}"),
                    });
                }
            }
            check_ends(
                &file("sentences"),
                as_slice(&shard.sentences, &file("sentences"))?,
                info.tokens,
                "token",
            )?;
            check_ends(
                &file("documents"),
                as_slice(&shard.documents, &file("documents"))?,
                info.sentences,
                "sentence",
            )?;
            shards.push(shard);
            doc_starts.push(doc_starts.last().copied().unwrap_or(0) + info.documents as usize);
        }
        Ok(Self {
            index,
            shards,
            doc_starts,
        })
    }

    /// The index.
    pub fn index(&self) -> &ShardIndex {
        &self.index
    }

    /// Total tokens.
    pub fn num_tokens(&self) -> u64 {
        self.index.shards.iter().map(|s| s.tokens).sum()
    }

    fn locate(&self, index: usize) -> (usize, usize) {
        let shard = self.doc_starts.partition_point(|&s| s <= index) - 1;
        (shard, index - self.doc_starts[shard])
    }
}

impl Documents for PreparedCorpus {
    fn num_documents(&self) -> usize {
        self.doc_starts.last().copied().unwrap_or(0)
    }

    fn sentences(&self, index: usize) -> Vec<&[u32]> {
        let (s, local) = self.locate(index);
        let shard = &self.shards[s];
        let name = Path::new(&self.index.shards[s].name);
        // Sizes and boundaries were validated on open; a cast can only fail on a misaligned
        // map, which mmap (page-aligned) rules out.
        let (Ok(tokens), Ok(sentence_ends), Ok(doc_ends)) = (
            as_slice::<u32>(&shard.tokens, name),
            as_slice::<u64>(&shard.sentences, name),
            as_slice::<u64>(&shard.documents, name),
        ) else {
            return Vec::new();
        };
        let first_sentence = if local == 0 {
            0
        } else {
            doc_ends[local - 1] as usize
        };
        let end_sentence = doc_ends[local] as usize;
        (first_sentence..end_sentence)
            .map(|k| {
                let start = if k == 0 {
                    0
                } else {
                    sentence_ends[k - 1] as usize
                };
                &tokens[start..sentence_ends[k] as usize]
            })
            .collect()
    }
}

/// Reads google-format text into documents of tokenized sentences, in memory (small corpora,
/// tests). Large corpora go through [`prepare`](super::shards::prepare).
pub fn read_documents(
    files: &[PathBuf],
    tokenizer: &BertTokenizer,
) -> Result<Vec<Vec<Vec<u32>>>, DataError> {
    let mut docs: Vec<Vec<Vec<u32>>> = vec![Vec::new()];
    for file in files {
        let text = std::fs::read_to_string(file).map_err(|e| DataError::io(file, e))?;
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() {
                docs.push(Vec::new());
                continue;
            }
            let ids = tokenizer
                .inner()
                .encode(line, false)
                .map_err(|e| DataError::Encoding(e.to_string()))?
                .get_ids()
                .to_vec();
            if !ids.is_empty()
                && let Some(last) = docs.last_mut()
            {
                last.push(ids);
            }
        }
        docs.push(Vec::new());
    }
    docs.retain(|d| !d.is_empty());
    if docs.is_empty() {
        return Err(DataError::Encoding("the corpus is empty".into()));
    }
    Ok(docs)
}
