//! Sequence classification and regression datasets: TSV, CSV (with a header or columns by
//! index) and JSONL, single sentences or pairs, labels as names, integers or scores.

use std::collections::BTreeSet;
use std::path::Path;
#[cfg(test)]
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::DataError;
use crate::tasks::{line_error, read_text};

/// Which columns hold what. For files without a header, columns are named by their 0-based
/// index (`"3"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Columns {
    /// First text (`text`).
    #[serde(default = "d::text")]
    pub text: String,
    /// Second text of a pair (`text_pair`); a missing `text_pair` column means single
    /// sentences, any other missing column is an error.
    #[serde(default = "d::text_pair")]
    pub text_pair: String,
    /// Label (`label`).
    #[serde(default = "d::label")]
    pub label: String,
    /// Whether the first line of a TSV/CSV file is a header.
    #[serde(default = "d::yes")]
    pub header: bool,
}

mod d {
    pub fn text() -> String {
        "text".into()
    }
    pub fn text_pair() -> String {
        "text_pair".into()
    }
    pub fn label() -> String {
        "label".into()
    }
    pub fn yes() -> bool {
        true
    }
}

impl Default for Columns {
    fn default() -> Self {
        Self {
            text: d::text(),
            text_pair: d::text_pair(),
            label: d::label(),
            header: true,
        }
    }
}

/// One labelled example; the label is kept as written until a [`LabelSet`] maps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassificationExample {
    /// First text.
    pub text: String,
    /// Second text of a pair.
    pub text_pair: Option<String>,
    /// Label as written in the file (`None` for unlabelled prediction inputs).
    pub label: Option<String>,
    /// 1-based line of the file (for error messages).
    pub line: usize,
}

fn format_of(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()) {
        Some("csv") => "csv",
        Some("jsonl" | "json" | "ndjson") => "jsonl",
        _ => "tsv",
    }
}

/// Reads a classification file (format from the extension: `.tsv`/`.txt`, `.csv`, `.jsonl`).
/// `require_label`: every row must have a label (training and evaluation).
pub fn read_classification(
    path: impl AsRef<Path>,
    columns: &Columns,
    require_label: bool,
) -> Result<Vec<ClassificationExample>, DataError> {
    let path = path.as_ref();
    let examples = match format_of(path) {
        "jsonl" => read_jsonl(path, columns, require_label)?,
        fmt => read_delimited(
            path,
            columns,
            require_label,
            if fmt == "csv" { b',' } else { b'\t' },
        )?,
    };
    if examples.is_empty() {
        return Err(DataError::Encoding(format!(
            "{}: no examples",
            path.display()
        )));
    }
    Ok(examples)
}

fn read_jsonl(
    path: &Path,
    columns: &Columns,
    require_label: bool,
) -> Result<Vec<ClassificationExample>, DataError> {
    let text = read_text(path)?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| line_error(path, n, format!("invalid JSON: {e}")))?;
        let field = |name: &str| -> Result<Option<String>, DataError> {
            match value.get(name) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
                Some(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => {
                    Ok(Some(v.to_string()))
                }
                Some(other) => Err(line_error(
                    path,
                    n,
                    format!("field {name} must be a string or number, got {other}"),
                )),
            }
        };
        let text = field(&columns.text)?
            .ok_or_else(|| line_error(path, n, format!("missing field \"{}\"", columns.text)))?;
        let label = field(&columns.label)?;
        if require_label && label.is_none() {
            return Err(line_error(
                path,
                n,
                format!("missing field \"{}\"", columns.label),
            ));
        }
        out.push(ClassificationExample {
            text,
            text_pair: field(&columns.text_pair)?,
            label,
            line: n,
        });
    }
    Ok(out)
}

fn read_delimited(
    path: &Path,
    columns: &Columns,
    require_label: bool,
    delimiter: u8,
) -> Result<Vec<ClassificationExample>, DataError> {
    let text = read_text(path)?;
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .has_headers(false)
        .flexible(true)
        // GLUE TSVs contain unbalanced quotes: tabs alone delimit fields there.
        .quoting(delimiter != b'\t')
        .from_reader(text.as_bytes());
    let mut records = reader.records();
    let header: Vec<String> = if columns.header {
        match records.next() {
            Some(Ok(r)) => r.iter().map(|h| h.trim().to_string()).collect(),
            Some(Err(e)) => return Err(line_error(path, 1, e.to_string())),
            None => {
                return Err(DataError::Encoding(format!(
                    "{}: empty file",
                    path.display()
                )));
            }
        }
    } else {
        Vec::new()
    };
    let index_of = |name: &str| -> Option<usize> {
        if columns.header {
            header.iter().position(|h| h == name)
        } else {
            name.parse().ok()
        }
    };
    let missing = |name: &str| {
        DataError::Encoding(format!(
            "{}: no column \"{name}\" (columns: {})",
            path.display(),
            if columns.header {
                header.join(", ")
            } else {
                "numbered from 0 (no header)".into()
            }
        ))
    };
    let text_col = index_of(&columns.text).ok_or_else(|| missing(&columns.text))?;
    let pair_col = index_of(&columns.text_pair);
    if pair_col.is_none() && columns.text_pair != d::text_pair() {
        return Err(missing(&columns.text_pair));
    }
    let label_col = index_of(&columns.label);
    if label_col.is_none() && require_label {
        return Err(missing(&columns.label));
    }
    let mut out = Vec::new();
    for record in records {
        let record = record.map_err(|e| {
            let line = e.position().map_or(0, |p| p.line() as usize);
            line_error(path, line, e.to_string())
        })?;
        let line = record.position().map_or(0, |p| p.line() as usize);
        if record.iter().all(|f| f.trim().is_empty()) {
            continue;
        }
        let get = |col: usize, name: &str| {
            record.get(col).map(str::to_string).ok_or_else(|| {
                line_error(
                    path,
                    line,
                    format!("row has {} fields, no column \"{name}\"", record.len()),
                )
            })
        };
        let label = match label_col {
            Some(c) => Some(get(c, &columns.label)?.trim().to_string()),
            None => None,
        };
        out.push(ClassificationExample {
            text: get(text_col, &columns.text)?,
            text_pair: pair_col.map(|c| get(c, &columns.text_pair)).transpose()?,
            label,
            line,
        });
    }
    Ok(out)
}

/// The label names of a classification task (ids by position), or regression.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LabelSet {
    /// Named classes, id = index.
    Classes(Vec<String>),
    /// One real-valued target.
    Regression,
}

impl LabelSet {
    /// Classes found in the examples: sorted numerically when all are integers, else by name.
    pub fn from_examples(examples: &[ClassificationExample]) -> Self {
        let names: BTreeSet<&str> = examples.iter().filter_map(|e| e.label.as_deref()).collect();
        let mut names: Vec<String> = names.into_iter().map(str::to_string).collect();
        if names.iter().all(|n| n.parse::<i64>().is_ok()) {
            names.sort_by_key(|n| n.parse::<i64>().unwrap_or(0));
        }
        Self::Classes(names)
    }

    /// Number of model outputs.
    pub fn num_labels(&self) -> usize {
        match self {
            Self::Classes(c) => c.len(),
            Self::Regression => 1,
        }
    }

    /// The target of an example: class id, or score for regression.
    pub fn target(
        &self,
        example: &ClassificationExample,
        path: &Path,
    ) -> Result<Target, DataError> {
        let label = example
            .label
            .as_deref()
            .ok_or_else(|| line_error(path, example.line, "missing label".into()))?;
        match self {
            Self::Regression => label.parse::<f32>().map(Target::Score).map_err(|_| {
                line_error(
                    path,
                    example.line,
                    format!("label {label:?} is not a number"),
                )
            }),
            Self::Classes(names) => names
                .iter()
                .position(|n| n == label)
                .map(Target::Class)
                .ok_or_else(|| {
                    line_error(
                        path,
                        example.line,
                        format!("unknown label {label:?} (known: {})", names.join(", ")),
                    )
                }),
        }
    }
}

/// A training target.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    /// Class id.
    Class(usize),
    /// Regression score.
    Score(f32),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, body).expect("write");
        p
    }

    #[test]
    fn reads_tsv_csv_jsonl_and_pairs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tsv = write(
            dir.path(),
            "a.tsv",
            "text\tlabel\nit 's \"great\tpos\nbad\tneg\n",
        );
        let e = read_classification(&tsv, &Columns::default(), true).expect("tsv");
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].text, "it 's \"great");
        assert_eq!(e[1].line, 3);
        let csv = write(
            dir.path(),
            "a.csv",
            "sentence1,sentence2,label\n\"a, b\",c,1\nd,e,0\n",
        );
        let cols = Columns {
            text: "sentence1".into(),
            text_pair: "sentence2".into(),
            ..Default::default()
        };
        let e = read_classification(&csv, &cols, true).expect("csv");
        assert_eq!(
            (e[0].text.as_str(), e[0].text_pair.as_deref()),
            ("a, b", Some("c"))
        );
        let jsonl = write(
            dir.path(),
            "a.jsonl",
            "{\"text\": \"x\", \"label\": 2}\n\n{\"text\": \"y\", \"text_pair\": \"z\", \"label\": 10}\n",
        );
        let e = read_classification(&jsonl, &Columns::default(), true).expect("jsonl");
        assert_eq!(
            LabelSet::from_examples(&e),
            LabelSet::Classes(vec!["2".into(), "10".into()])
        );
        assert_eq!(e[1].text_pair.as_deref(), Some("z"));
    }

    #[test]
    fn headerless_columns_by_index() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tsv = write(
            dir.path(),
            "cola.tsv",
            "gj04\t1\t\tThe sailors rode.\ngj04\t0\t*\tRode sailors the.\n",
        );
        let cols = Columns {
            text: "3".into(),
            label: "1".into(),
            header: false,
            ..Default::default()
        };
        let e = read_classification(&tsv, &cols, true).expect("cola");
        assert_eq!(
            (e[1].text.as_str(), e[1].label.as_deref()),
            ("Rode sailors the.", Some("0"))
        );
    }

    #[test]
    fn errors_name_file_line_and_column() {
        let dir = tempfile::tempdir().expect("tempdir");
        let short = write(
            dir.path(),
            "s.tsv",
            "text\tlabel\nfine\tpos\nno label here\n",
        );
        let err = read_classification(&short, &Columns::default(), true).expect_err("short row");
        assert!(err.to_string().contains("s.tsv:3"), "{err}");
        let cols = Columns {
            text: "sentence".into(),
            ..Default::default()
        };
        let err = read_classification(&short, &cols, true).expect_err("no column");
        assert!(err.to_string().contains("no column \"sentence\""), "{err}");
        let bad = write(
            dir.path(),
            "b.jsonl",
            "{\"text\": \"a\", \"label\": 1}\n{\"text\": }\n",
        );
        let err = read_classification(&bad, &Columns::default(), true).expect_err("json");
        assert!(err.to_string().contains("b.jsonl:2"), "{err}");
        let e = read_classification(
            write(dir.path(), "r.tsv", "text\tlabel\na\tx\n"),
            &Columns::default(),
            true,
        )
        .expect("ok");
        let err = LabelSet::Regression
            .target(&e[0], Path::new("r.tsv"))
            .expect_err("not a number");
        assert!(err.to_string().contains("r.tsv:2"), "{err}");
    }
}
