//! Multiple choice: JSONL `{"context": ..., "choices": [...], "label": k}`, the CommonsenseQA
//! Hugging Face dump (`question`, `choices.text`, `answerKey`) and COPA's XML.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::DataError;
use crate::tasks::{line_error, read_text};

/// A context and its candidate continuations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChoiceExample {
    /// Context (question, premise).
    pub context: String,
    /// Candidates; each is encoded as the pair (context, choice).
    pub choices: Vec<String>,
    /// Index of the right choice (`None` for unlabelled inputs).
    pub label: Option<usize>,
}

#[derive(Deserialize)]
struct CsqaChoices {
    label: Vec<String>,
    text: Vec<String>,
}

/// Reads multiple-choice data: `.xml` as COPA, `.jsonl` either our format or CommonsenseQA's.
pub fn read_multiple_choice(path: impl AsRef<Path>) -> Result<Vec<ChoiceExample>, DataError> {
    let path = path.as_ref();
    let text = read_text(path)?;
    let examples = if path.extension().is_some_and(|e| e == "xml") {
        read_copa(path, &text)?
    } else {
        read_jsonl(path, &text)?
    };
    if examples.is_empty() {
        return Err(DataError::Encoding(format!(
            "{}: no examples",
            path.display()
        )));
    }
    Ok(examples)
}

fn read_jsonl(path: &Path, text: &str) -> Result<Vec<ChoiceExample>, DataError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| line_error(path, n, format!("invalid JSON: {e}")))?;
        let example = if value.get("question").is_some() && value.get("answerKey").is_some() {
            // CommonsenseQA: {"question", "choices": {"label": [A..E], "text": [...]}, "answerKey"}.
            let choices: CsqaChoices = serde_json::from_value(value["choices"].clone())
                .map_err(|e| line_error(path, n, format!("bad choices: {e}")))?;
            let key = value["answerKey"].as_str().unwrap_or("");
            let label = if key.is_empty() {
                None
            } else {
                Some(choices.label.iter().position(|l| l == key).ok_or_else(|| {
                    line_error(
                        path,
                        n,
                        format!("answerKey {key:?} is not among {:?}", choices.label),
                    )
                })?)
            };
            ChoiceExample {
                context: value["question"].as_str().unwrap_or("").to_string(),
                choices: choices.text,
                label,
            }
        } else {
            serde_json::from_value(value).map_err(|e| {
                line_error(
                    path,
                    n,
                    format!("expected {{\"context\", \"choices\", \"label\"}}: {e}"),
                )
            })?
        };
        if example.choices.len() < 2 {
            return Err(line_error(path, n, "fewer than two choices".into()));
        }
        if example.label.is_some_and(|l| l >= example.choices.len()) {
            return Err(line_error(
                path,
                n,
                format!("label {:?} out of range", example.label),
            ));
        }
        out.push(example);
    }
    Ok(out)
}

fn read_copa(path: &Path, text: &str) -> Result<Vec<ChoiceExample>, DataError> {
    // The DTD declaration is not needed and roxmltree refuses external DTDs by default.
    let body = match (text.find("<!DOCTYPE"), text.find("<copa-corpus")) {
        (Some(d), Some(c)) if d < c => format!("{}{}", &text[..d], &text[c..]),
        _ => text.to_string(),
    };
    let doc = roxmltree::Document::parse(&body).map_err(|e| DataError::Line {
        path: path.to_path_buf(),
        line: e.pos().row as usize,
        message: format!("invalid COPA XML: {e}"),
    })?;
    let mut out = Vec::new();
    for item in doc.descendants().filter(|n| n.has_tag_name("item")) {
        let line = doc.text_pos_at(item.range().start).row as usize;
        let child = |tag: &str| {
            item.children()
                .find(|c| c.has_tag_name(tag))
                .and_then(|c| c.text())
                .map(str::trim)
                .map(str::to_string)
                .ok_or_else(|| line_error(path, line, format!("item without <{tag}>")))
        };
        let premise = child("p")?;
        // As SuperGLUE baselines do: the premise joined to the relation it asks for.
        let connector = match item.attribute("asks-for") {
            Some("cause") => "What was the cause?",
            Some("effect") => "What happened as a result?",
            other => {
                return Err(line_error(
                    path,
                    line,
                    format!("asks-for {other:?} is not cause/effect"),
                ));
            }
        };
        let label = match item.attribute("most-plausible-alternative") {
            Some("1") => Some(0),
            Some("2") => Some(1),
            None => None,
            Some(other) => {
                return Err(line_error(
                    path,
                    line,
                    format!("most-plausible-alternative {other:?}"),
                ));
            }
        };
        out.push(ChoiceExample {
            context: format!("{premise} {connector}"),
            choices: vec![child("a1")?, child("a2")?],
            label,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_jsonl_csqa_and_copa() {
        let dir = tempfile::tempdir().expect("tempdir");
        let j = dir.path().join("mc.jsonl");
        std::fs::write(&j, "{\"context\": \"c\", \"choices\": [\"a\", \"b\"], \"label\": 1}\n{\"id\": \"x\", \"question\": \"q?\", \"choices\": {\"label\": [\"A\", \"B\", \"C\"], \"text\": [\"x\", \"y\", \"z\"]}, \"answerKey\": \"C\"}\n").expect("write");
        let e = read_multiple_choice(&j).expect("jsonl");
        assert_eq!(e[0].label, Some(1));
        assert_eq!(
            (e[1].context.as_str(), e[1].label, e[1].choices.len()),
            ("q?", Some(2), 3)
        );
        let x = dir.path().join("copa.xml");
        std::fs::write(&x, "<?xml version=\"1.0\"?>\n<!DOCTYPE copa-corpus SYSTEM \"copa.dtd\">\n<copa-corpus version=\"1.0\">\n<item id=\"1\" asks-for=\"cause\" most-plausible-alternative=\"2\">\n<p>The grass was wet.</p>\n<a1>It was sunny.</a1>\n<a2>It rained.</a2>\n</item>\n</copa-corpus>\n").expect("write");
        let e = read_multiple_choice(&x).expect("copa");
        assert_eq!(e[0].label, Some(1));
        assert_eq!(e[0].context, "The grass was wet. What was the cause?");
        std::fs::write(
            &j,
            "{\"context\": \"c\", \"choices\": [\"a\", \"b\"], \"label\": 5}\n",
        )
        .expect("write");
        let err = read_multiple_choice(&j).expect_err("label out of range");
        assert!(err.to_string().contains("mc.jsonl:1"), "{err}");
    }
}
