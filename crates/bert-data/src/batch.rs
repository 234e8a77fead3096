//! Dynamic padding of encoded inputs into rectangular batches.

use crate::tokenizer::Encoded;

/// Rows padded to one length, as `i64` (the dtype transformers uses for ids).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PaddedBatch {
    /// `[rows, seq_len]` token ids, padded with the `[PAD]` id.
    pub input_ids: Vec<Vec<i64>>,
    /// `[rows, seq_len]` segment ids, padded with 0.
    pub token_type_ids: Vec<Vec<i64>>,
    /// `[rows, seq_len]`, 1 for real tokens and 0 for padding.
    pub attention_mask: Vec<Vec<i64>>,
    /// The padded length.
    pub seq_len: usize,
}

impl PaddedBatch {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }

    /// Whether the batch has no rows.
    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }

    /// The rows `range` as a batch of their own, keeping the padded length.
    pub fn rows(&self, range: std::ops::Range<usize>) -> PaddedBatch {
        PaddedBatch {
            input_ids: self.input_ids[range.clone()].to_vec(),
            token_type_ids: self.token_type_ids[range.clone()].to_vec(),
            attention_mask: self.attention_mask[range].to_vec(),
            seq_len: self.seq_len,
        }
    }

    /// Each row flattened, row-major.
    pub fn flat(rows: &[Vec<i64>]) -> Vec<i64> {
        rows.iter().flatten().copied().collect()
    }
}

/// How a batch is padded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Padding {
    /// Pad to at least this length (e.g. the longest row of a whole file).
    pub min_length: usize,
    /// Round the length up to a multiple of this (e.g. 8 for tensor cores).
    pub pad_to_multiple_of: Option<usize>,
}

/// Pads rows of `(input_ids, token_type_ids, attention_mask)` to the longest row (dynamic
/// padding), then to `padding.min_length` and a multiple of `padding.pad_to_multiple_of`.
pub fn pad_rows<'a, I>(rows: I, pad_id: u32, padding: Padding) -> PaddedBatch
where
    I: IntoIterator<Item = (&'a [u32], &'a [u32], &'a [u32])>,
{
    let rows: Vec<_> = rows.into_iter().collect();
    let longest = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let mut seq_len = longest.max(padding.min_length);
    if let Some(m) = padding.pad_to_multiple_of.filter(|&m| m > 1) {
        seq_len = seq_len.div_ceil(m) * m;
    }
    let widen = |values: &[u32], fill: i64| -> Vec<i64> {
        let mut row: Vec<i64> = values.iter().map(|&v| i64::from(v)).collect();
        row.resize(seq_len, fill);
        row
    };
    let mut batch = PaddedBatch {
        seq_len,
        ..Default::default()
    };
    for (ids, types, mask) in rows {
        batch.input_ids.push(widen(ids, i64::from(pad_id)));
        batch.token_type_ids.push(widen(types, 0));
        batch.attention_mask.push(widen(mask, 0));
    }
    batch
}

/// Pads encodings (see [`pad_rows`]).
pub fn pad_encodings(encodings: &[Encoded], pad_id: u32, padding: Padding) -> PaddedBatch {
    pad_rows(
        encodings.iter().map(|e| {
            (
                e.input_ids.as_slice(),
                e.token_type_ids.as_slice(),
                e.attention_mask.as_slice(),
            )
        }),
        pad_id,
        padding,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_to_longest_then_multiple() {
        let a: (&[u32], &[u32], &[u32]) = (&[2, 5, 3], &[0, 0, 0], &[1, 1, 1]);
        let b: (&[u32], &[u32], &[u32]) = (&[2, 3], &[0, 0], &[1, 1]);
        let batch = pad_rows([a, b], 0, Padding::default());
        assert_eq!(batch.seq_len, 3);
        assert_eq!(batch.input_ids, vec![vec![2, 5, 3], vec![2, 3, 0]]);
        assert_eq!(batch.attention_mask[1], vec![1, 1, 0]);
        let batch = pad_rows(
            [a, b],
            7,
            Padding {
                min_length: 0,
                pad_to_multiple_of: Some(4),
            },
        );
        assert_eq!(batch.seq_len, 4);
        assert_eq!(batch.input_ids[1], vec![2, 3, 7, 7]);
        assert_eq!(batch.token_type_ids[0], vec![0, 0, 0, 0]);
        let batch = pad_rows(
            [a],
            0,
            Padding {
                min_length: 5,
                pad_to_multiple_of: None,
            },
        );
        assert_eq!(batch.rows(0..1).seq_len, 5);
    }
}
