//! JSONL inputs of `bert encode` / `bert tokenize`: text lines and pre-tokenized lines.

use std::io::BufRead;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

/// One input line.
#[derive(Debug, Clone, PartialEq)]
pub enum InputLine {
    /// `{"text": "...", "text_pair": "..."}`.
    Text {
        /// First segment.
        text: String,
        /// Optional second segment.
        text_pair: Option<String>,
    },
    /// `{"input_ids": [...], "token_type_ids": [...], "attention_mask": [...]}`.
    Ids {
        /// Token ids.
        input_ids: Vec<u32>,
        /// Segment ids (zeros when absent).
        token_type_ids: Vec<u32>,
        /// Attention mask (ones when absent).
        attention_mask: Vec<u32>,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TextLine {
    text: String,
    #[serde(default)]
    text_pair: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IdsLine {
    input_ids: Vec<u32>,
    #[serde(default)]
    token_type_ids: Option<Vec<u32>>,
    #[serde(default)]
    attention_mask: Option<Vec<u32>>,
}

fn parse_line(line: &str) -> Result<InputLine> {
    let value: serde_json::Value =
        serde_json::from_str(line).map_err(|e| anyhow::anyhow!("invalid JSON: {e}"))?;
    let object = value
        .as_object()
        .ok_or_else(|| anyhow::anyhow!("expected a JSON object"))?;
    if object.contains_key("text") {
        let t: TextLine =
            serde_json::from_value(value).map_err(|e| anyhow::anyhow!("bad text line: {e}"))?;
        return Ok(InputLine::Text {
            text: t.text,
            text_pair: t.text_pair,
        });
    }
    if object.contains_key("input_ids") {
        let t: IdsLine = serde_json::from_value(value)
            .map_err(|e| anyhow::anyhow!("bad pre-tokenized line: {e}"))?;
        let n = t.input_ids.len();
        if n == 0 {
            bail!("input_ids is empty");
        }
        let token_type_ids = t.token_type_ids.unwrap_or_else(|| vec![0; n]);
        let attention_mask = t.attention_mask.unwrap_or_else(|| vec![1; n]);
        if token_type_ids.len() != n || attention_mask.len() != n {
            bail!(
                "input_ids, token_type_ids and attention_mask have different lengths ({n}, {}, {})",
                token_type_ids.len(),
                attention_mask.len()
            );
        }
        if let Some(bad) = attention_mask.iter().find(|&&m| m > 1) {
            bail!("attention_mask must be 0 or 1, found {bad}");
        }
        return Ok(InputLine::Ids {
            input_ids: t.input_ids,
            token_type_ids,
            attention_mask,
        });
    }
    bail!("expected a \"text\" or an \"input_ids\" field")
}

/// Reads a JSONL file; blank lines are skipped, a malformed line is an error with its number.
pub fn read_jsonl(path: &Path) -> Result<Vec<(usize, InputLine)>> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot open input file {}", path.display()))?;
    let mut lines = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let number = i + 1;
        let line =
            line.with_context(|| format!("{}:{number}: cannot read line", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let parsed = parse_line(&line).with_context(|| format!("{}:{number}", path.display()))?;
        lines.push((number, parsed));
    }
    if lines.is_empty() {
        bail!("{}: no input lines", path.display());
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_kinds_and_rejects_bad_lines() {
        assert_eq!(
            parse_line(r#"{"text": "a", "text_pair": "b"}"#).expect("text"),
            InputLine::Text {
                text: "a".into(),
                text_pair: Some("b".into())
            }
        );
        assert_eq!(
            parse_line(r#"{"input_ids": [101, 102]}"#).expect("ids"),
            InputLine::Ids {
                input_ids: vec![101, 102],
                token_type_ids: vec![0, 0],
                attention_mask: vec![1, 1]
            }
        );
        for bad in [
            "not json",
            "[1, 2]",
            r#"{"txt": "a"}"#,
            r#"{"text": 3}"#,
            r#"{"text": "a", "extra": 1}"#,
            r#"{"input_ids": [1, 2], "attention_mask": [1]}"#,
            r#"{"input_ids": [1, -2]}"#,
            r#"{"input_ids": [1, 2], "attention_mask": [1, 2]}"#,
        ] {
            assert!(parse_line(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn errors_name_file_and_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("in.jsonl");
        std::fs::write(&path, "{\"text\": \"ok\"}\n\n{\"text\": oops}\n").expect("write");
        let err = read_jsonl(&path).expect_err("line 3 is bad");
        let msg = format!("{err:#}");
        assert!(msg.contains("in.jsonl:3"), "{msg}");
    }
}
