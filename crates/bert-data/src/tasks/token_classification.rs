//! Token classification (NER): CoNLL files and JSONL, BIO/IOB2 tags, labels on the first word
//! piece of each word (−100 on the rest and on specials), and the mapping back to words.

use std::collections::BTreeSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::DataError;
use crate::pretraining::IGNORE_INDEX;
use crate::tasks::{line_error, read_text};
use crate::tokenizer::{BertTokenizer, Encoded};

/// A sentence of words and their tags.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaggedSentence {
    /// Words.
    pub tokens: Vec<String>,
    /// One tag per word (`O`, `B-PER`, `I-PER`, …); empty for unlabelled inputs.
    pub tags: Vec<String>,
    /// 1-based line where the sentence starts.
    #[serde(default)]
    pub line: usize,
}

/// Reads CoNLL (word and tag per line, first and last whitespace-separated columns; a blank or
/// whitespace-only line ends a sentence; `-DOCSTART-` lines are skipped) or JSONL
/// (`{"tokens": [...], "tags": [...]}`), by extension.
pub fn read_token_classification(path: impl AsRef<Path>) -> Result<Vec<TaggedSentence>, DataError> {
    let path = path.as_ref();
    let text = read_text(path)?;
    let sentences = if matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("jsonl" | "json")
    ) {
        read_jsonl(path, &text)?
    } else {
        read_conll(path, &text)?
    };
    if sentences.is_empty() {
        return Err(DataError::Encoding(format!(
            "{}: no sentences",
            path.display()
        )));
    }
    Ok(sentences)
}

fn read_conll(path: &Path, text: &str) -> Result<Vec<TaggedSentence>, DataError> {
    let mut out = Vec::new();
    let mut current = TaggedSentence {
        tokens: Vec::new(),
        tags: Vec::new(),
        line: 1,
    };
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let fields: Vec<&str> = line.split(['\t', ' ']).filter(|f| !f.is_empty()).collect();
        if fields.is_empty() || fields[0] == "-DOCSTART-" {
            if !current.tokens.is_empty() {
                out.push(std::mem::take(&mut current));
            }
            current.line = n + 1;
            continue;
        }
        if fields.len() < 2 {
            return Err(line_error(
                path,
                n,
                format!("expected a word and a tag, got {line:?}"),
            ));
        }
        let tag = fields[fields.len() - 1];
        validate_tag(tag).map_err(|m| line_error(path, n, m))?;
        current.tokens.push(fields[0].to_string());
        current.tags.push(tag.to_string());
    }
    if !current.tokens.is_empty() {
        out.push(current);
    }
    Ok(out)
}

fn validate_tag(tag: &str) -> Result<(), String> {
    if tag == "O" || tag.starts_with("B-") || tag.starts_with("I-") {
        Ok(())
    } else {
        Err(format!("tag {tag:?} is not BIO (O, B-X, I-X)"))
    }
}

fn read_jsonl(path: &Path, text: &str) -> Result<Vec<TaggedSentence>, DataError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let mut s: TaggedSentence = serde_json::from_str(line).map_err(|e| {
            line_error(
                path,
                n,
                format!("expected {{\"tokens\": [...], \"tags\": [...]}}: {e}"),
            )
        })?;
        if !s.tags.is_empty() && s.tags.len() != s.tokens.len() {
            return Err(line_error(
                path,
                n,
                format!("{} tokens but {} tags", s.tokens.len(), s.tags.len()),
            ));
        }
        for tag in &s.tags {
            validate_tag(tag).map_err(|m| line_error(path, n, m))?;
        }
        s.line = n;
        out.push(s);
    }
    Ok(out)
}

/// Tag names sorted with `O` first, then by entity type and B before I.
pub fn tag_set(sentences: &[TaggedSentence]) -> Vec<String> {
    let tags: BTreeSet<&str> = sentences
        .iter()
        .flat_map(|s| s.tags.iter().map(String::as_str))
        .collect();
    let mut tags: Vec<String> = tags.into_iter().map(str::to_string).collect();
    tags.sort_by_key(|t| (t != "O", t.get(2..).unwrap_or("").to_string(), t.clone()));
    tags
}

/// An encoded sentence with word-aligned labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenClassificationFeature {
    /// The encoding (word ids index the sentence's words).
    pub encoding: Encoded,
    /// Tag id on the first piece of each word, −100 elsewhere.
    pub labels: Vec<i64>,
}

/// Encodes a sentence (truncated to `max_length`) and aligns its tags to word pieces.
pub fn encode_sentence(
    tokenizer: &BertTokenizer,
    sentence: &TaggedSentence,
    tags: &[String],
) -> Result<TokenClassificationFeature, DataError> {
    let words: Vec<&str> = sentence.tokens.iter().map(String::as_str).collect();
    let encoding = tokenizer.encode_words(&words)?;
    let ids: Vec<Option<i64>> = sentence
        .tags
        .iter()
        .map(|t| tags.iter().position(|x| x == t).map(|i| i as i64))
        .collect();
    let mut labels = Vec::with_capacity(encoding.len());
    let mut previous = None;
    for word in &encoding.word_ids {
        let label = match word {
            Some(w) if Some(*w) != previous => match ids.get(*w as usize) {
                Some(Some(id)) => *id,
                Some(None) => {
                    return Err(DataError::Encoding(format!(
                        "line {}: tag {:?} is not in the label set",
                        sentence.line, sentence.tags[*w as usize]
                    )));
                }
                None => IGNORE_INDEX,
            },
            _ => IGNORE_INDEX,
        };
        previous = *word;
        labels.push(label);
    }
    Ok(TokenClassificationFeature { encoding, labels })
}

/// Per-word predictions from per-token ones: each word takes the prediction of its first piece.
/// Words cut off by truncation get `None`.
pub fn word_predictions<T: Clone>(
    encoding: &Encoded,
    token_predictions: &[T],
    num_words: usize,
) -> Vec<Option<T>> {
    let mut out = vec![None; num_words];
    for (i, word) in encoding.word_ids.iter().enumerate() {
        if let Some(w) = word {
            let w = *w as usize;
            if w < num_words && out[w].is_none() {
                out[w] = token_predictions.get(i).cloned();
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_conll_with_whitespace_only_separators() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("x.conll");
        std::fs::write(
            &p,
            "-DOCSTART- O\n\nEU\tB-ORG\nrejects O\n \t\nPeter\tB-PER\nBlackburn\tI-PER\n",
        )
        .expect("write");
        let s = read_token_classification(&p).expect("conll");
        assert_eq!(s.len(), 2);
        assert_eq!(s[1].tokens, vec!["Peter", "Blackburn"]);
        assert_eq!(s[1].line, 6);
        assert_eq!(tag_set(&s), vec!["O", "B-ORG", "B-PER", "I-PER"]);
        std::fs::write(&p, "EU\tB-ORG\nbad line\tORG\n").expect("write");
        let err = read_token_classification(&p).expect_err("not BIO");
        assert!(err.to_string().contains("x.conll:2"), "{err}");
        let j = dir.path().join("x.jsonl");
        std::fs::write(&j, "{\"tokens\": [\"a\", \"b\"], \"tags\": [\"O\"]}\n").expect("write");
        let err = read_token_classification(&j).expect_err("length");
        assert!(err.to_string().contains("x.jsonl:1"), "{err}");
    }

    #[test]
    fn labels_go_on_first_pieces_and_map_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let vocab = [
            "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "john", "un", "##aff", "##able", "paris",
            "in",
        ];
        std::fs::write(dir.path().join("vocab.txt"), vocab.join("\n")).expect("vocab");
        let tok = BertTokenizer::from_dir(dir.path()).expect("tok");
        let sentence = TaggedSentence {
            tokens: vec![
                "John".into(),
                "unaffable".into(),
                "in".into(),
                "Paris".into(),
            ],
            tags: vec!["B-PER".into(), "O".into(), "O".into(), "B-LOC".into()],
            line: 1,
        };
        let tags = vec!["O".to_string(), "B-LOC".into(), "B-PER".into()];
        let f = encode_sentence(&tok, &sentence, &tags).expect("encode");
        assert_eq!(
            f.encoding.tokens,
            vec![
                "[CLS]", "john", "un", "##aff", "##able", "in", "paris", "[SEP]"
            ]
        );
        assert_eq!(f.labels, vec![-100, 2, 0, -100, -100, 0, 1, -100]);
        let predicted: Vec<i64> = f.labels.iter().map(|&l| l.max(0)).collect();
        let words = word_predictions(&f.encoding, &predicted, 4);
        assert_eq!(words, vec![Some(2), Some(0), Some(0), Some(1)]);
    }
}
