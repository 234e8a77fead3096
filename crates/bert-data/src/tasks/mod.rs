//! Fine-tuning datasets: sequence classification/regression, token classification (CoNLL,
//! JSONL), extractive QA (SQuAD v1.1/v2.0) and multiple choice (JSONL, CommonsenseQA, COPA).

pub mod classification;
pub mod multiple_choice;
pub mod qa;
pub mod token_classification;

use std::path::Path;

use crate::error::DataError;

/// Reads a UTF-8 text file, dropping a byte-order mark.
pub(crate) fn read_text(path: &Path) -> Result<String, DataError> {
    let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
    Ok(text
        .strip_prefix('\u{feff}')
        .map(str::to_string)
        .unwrap_or(text))
}

pub(crate) fn line_error(path: &Path, line: usize, message: String) -> DataError {
    DataError::Line {
        path: path.to_path_buf(),
        line,
        message,
    }
}
