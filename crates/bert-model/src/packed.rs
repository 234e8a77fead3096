//! Packed (unpadded) inference: several sequences of different lengths one after the other,
//! with their lengths. The token-wise blocks (embeddings, dense layers, LayerNorm) run on all
//! tokens at once and attention within each sequence, so no work goes to padding (what
//! flash-attention's variable-length kernels do on GPUs, and what text-embeddings-inference
//! serves with). The hidden states equal [`BertModel::forward`]'s at the real tokens.
//!
//! ```
//! use bert_model::{BertConfig, BertModel, PackedInput, packed_mean};
//! use burn::backend::Flex;
//!
//! let device = Default::default();
//! let model = BertModel::<Flex>::new(&BertConfig::tiny(), true, &device);
//! // Two sequences, 4 and 2 tokens: 6 rows, no padding.
//! let input = PackedInput::<Flex>::from_rows(&[(&[2, 7, 9, 3], &[0; 4]), (&[2, 3], &[0; 2])], &device);
//! let out = model.forward_packed(input.clone());
//! assert_eq!(out.last_hidden_state.dims(), [6, 128]);
//! assert_eq!(out.pooler_output.expect("a pooler").dims(), [2, 128]);
//! assert_eq!(packed_mean(out.last_hidden_state, &input.lengths).dims(), [2, 128]);
//! ```

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use crate::model::{BertAttention, BertEncoder, BertLayer, BertSelfAttention};
use crate::{BertModel, ops};

/// Sequences packed one after the other.
#[derive(Debug, Clone)]
pub struct PackedInput<B: Backend> {
    /// `[total]` WordPiece ids.
    pub input_ids: Tensor<B, 1, Int>,
    /// `[total]` segment ids.
    pub token_type_ids: Tensor<B, 1, Int>,
    /// Each sequence's length (summing to `total`).
    pub lengths: Vec<usize>,
}

impl<B: Backend> PackedInput<B> {
    /// Packs `(input_ids, token_type_ids)` rows (each pair of the same length).
    pub fn from_rows(rows: &[(&[u32], &[u32])], device: &B::Device) -> Self {
        let total: usize = rows.iter().map(|r| r.0.len()).sum();
        let flat = |column: &mut dyn Iterator<Item = &[u32]>| {
            let values: Vec<i64> = column.flatten().map(|&x| i64::from(x)).collect();
            Tensor::<B, 1, Int>::from_data(TensorData::new(values, [total]), device)
        };
        Self {
            input_ids: flat(&mut rows.iter().map(|r| r.0)),
            token_type_ids: flat(&mut rows.iter().map(|r| r.1)),
            lengths: rows.iter().map(|r| r.0.len()).collect(),
        }
    }
}

/// The outputs of [`BertModel::forward_packed`].
#[derive(Debug, Clone)]
pub struct PackedOutput<B: Backend> {
    /// `[total, H]`: every sequence's rows, in order.
    pub last_hidden_state: Tensor<B, 2>,
    /// `[sequences, H]`, when the model has a pooler.
    pub pooler_output: Option<Tensor<B, 2>>,
}

/// Weights of one [`packed_mean`] product at most (sequences × their tokens): the averaging
/// matrix is block-diagonal, so it is built a block of sequences at a time.
const MEAN_BLOCK: usize = 1 << 20;

/// Each sequence's mean hidden state: `[total, H]` rows of sequences of `lengths` →
/// `[sequences, H]` (sentence-transformers' mean pooling, as [`crate::masked_mean`]). Runs as
/// products of an averaging matrix with the rows, over blocks of consecutive sequences of at
/// most [`MEAN_BLOCK`] weights each, so many short sequences never build a `sequences × total`
/// matrix.
pub fn packed_mean<B: Backend>(hidden: Tensor<B, 2>, lengths: &[usize]) -> Tensor<B, 2> {
    let [_, width] = hidden.dims();
    let device = hidden.device();
    // Blocks of consecutive sequences: (first sequence, end, first row, rows).
    let mut blocks = Vec::new();
    let (mut first, mut row, mut rows) = (0, 0, 0);
    for (i, &len) in lengths.iter().enumerate() {
        if i > first && (i + 1 - first) * (rows + len) > MEAN_BLOCK {
            blocks.push((first, i, row, rows));
            (first, row, rows) = (i, row + rows, 0);
        }
        rows += len;
    }
    if first < lengths.len() {
        blocks.push((first, lengths.len(), row, rows));
    }
    let means: Vec<Tensor<B, 2>> = blocks
        .into_iter()
        .map(|(first, end, row, rows)| {
            let count = end - first;
            let mut weights = vec![0f32; count * rows];
            let mut start = 0;
            for (i, &len) in lengths[first..end].iter().enumerate() {
                weights[i * rows + start..i * rows + start + len].fill(1.0 / len.max(1) as f32);
                start += len;
            }
            let weights =
                Tensor::<B, 2>::from_data(TensorData::new(weights, [count, rows]), &device);
            weights.matmul(hidden.clone().slice([row..row + rows, 0..width]))
        })
        .collect();
    if means.is_empty() {
        return Tensor::zeros([0, width], &device);
    }
    Tensor::cat(means, 0)
}

/// Each sequence's first row (`[CLS]`): `[total, H]` rows of sequences of `lengths` →
/// `[sequences, H]`.
pub fn packed_first<B: Backend>(hidden: Tensor<B, 2>, lengths: &[usize]) -> Tensor<B, 2> {
    let starts: Vec<i64> = lengths
        .iter()
        .scan(0i64, |at, &len| {
            let start = *at;
            *at += len as i64;
            Some(start)
        })
        .collect();
    let index =
        Tensor::<B, 1, Int>::from_data(TensorData::new(starts, [lengths.len()]), &hidden.device());
    hidden.select(0, index)
}

impl<B: Backend> BertModel<B> {
    /// Runs the encoder on packed sequences (inference). Shapes: see [`PackedInput`] and
    /// [`PackedOutput`]. Positions restart at 0 in each sequence.
    pub fn forward_packed(&self, input: PackedInput<B>) -> PackedOutput<B> {
        let device = input.input_ids.device();
        let [total] = input.input_ids.dims();
        let positions: Vec<i64> = input
            .lengths
            .iter()
            .flat_map(|&len| 0..len as i64)
            .collect();
        let positions =
            Tensor::<B, 1, Int>::from_data(TensorData::new(positions, [total]), &device);
        let e = &self.embeddings;
        let x = e
            .word_embeddings
            .forward(input.input_ids.reshape([1, total]))
            + e.token_type_embeddings
                .forward(input.token_type_ids.reshape([1, total]))
            + e.position_embeddings.forward(positions.reshape([1, total]));
        let embedded = e.dropout.forward(e.layer_norm.forward(x));
        let hidden = self.encoder.forward_packed(embedded, &input.lengths);
        let width = hidden.dims()[2];
        let last_hidden_state = hidden.reshape([total, width]);
        let pooler_output = self.pooler.as_ref().map(|p| {
            let n = input.lengths.len();
            let first = packed_first(last_hidden_state.clone(), &input.lengths);
            p.forward(first.reshape([n, 1, width]))
        });
        PackedOutput {
            last_hidden_state,
            pooler_output,
        }
    }
}

impl<B: Backend> BertEncoder<B> {
    /// Every layer on packed sequences: `[1, total, H]` → `[1, total, H]`.
    pub fn forward_packed(&self, mut hidden: Tensor<B, 3>, lengths: &[usize]) -> Tensor<B, 3> {
        for layer in &self.layer {
            hidden = layer.forward_packed(hidden, lengths);
        }
        hidden
    }
}

impl<B: Backend> BertLayer<B> {
    /// [`BertLayer::forward`] on packed sequences: `[1, total, H]` → `[1, total, H]`.
    pub fn forward_packed(&self, hidden: Tensor<B, 3>, lengths: &[usize]) -> Tensor<B, 3> {
        let attended = self.attention.forward_packed(hidden, lengths);
        let inner = self.intermediate.forward(attended.clone());
        self.output.forward(inner, attended)
    }
}

impl<B: Backend> BertAttention<B> {
    /// [`BertAttention::forward`] on packed sequences: `[1, total, H]` → `[1, total, H]`.
    pub fn forward_packed(&self, hidden: Tensor<B, 3>, lengths: &[usize]) -> Tensor<B, 3> {
        let context = self.self_attn.forward_packed(hidden.clone(), lengths);
        self.output.forward(context, hidden)
    }
}

impl<B: Backend> BertSelfAttention<B> {
    /// Attention within each packed sequence: `hidden` `[1, total, H]`, `lengths` summing to
    /// `total` → the context `[1, total, H]`.
    pub fn forward_packed(&self, hidden: Tensor<B, 3>, lengths: &[usize]) -> Tensor<B, 3> {
        ops::self_attention_packed(
            &self.query,
            &self.key,
            &self.value,
            self.num_heads,
            &self.dropout,
            hidden,
            lengths,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BertConfig, BertInput, masked_mean};
    use burn::backend::{Autodiff, Flex};

    fn config() -> BertConfig {
        let mut c = BertConfig::tiny();
        c.vocab_size = 50;
        c.hidden_size = 64;
        c.num_attention_heads = 2;
        c.intermediate_size = 96;
        c.max_position_embeddings = 20;
        c.hidden_dropout_prob = 0.0;
        c.attention_probs_dropout_prob = 0.0;
        c
    }

    /// The packed forward against the padded one at the real tokens, with the pooler and the
    /// mean pooling.
    fn packed_equals_padded<B: Backend>(model: &BertModel<B>) {
        let device = Default::default();
        let rows: [(&[u32], &[u32]); 3] = [
            (&[2, 5, 7, 9, 11, 3], &[0, 0, 0, 0, 1, 1]),
            (&[2, 8, 3], &[0, 0, 0]),
            (&[2, 13, 14, 15, 3], &[0, 0, 0, 1, 1]),
        ];
        let seq = 6;
        let pad = |v: &[u32], fill: i64| {
            let mut row: Vec<i64> = v.iter().map(|&x| i64::from(x)).collect();
            row.resize(seq, fill);
            row
        };
        let ids: Vec<Vec<i64>> = rows.iter().map(|r| pad(r.0, 0)).collect();
        let types: Vec<Vec<i64>> = rows.iter().map(|r| pad(r.1, 0)).collect();
        let mask: Vec<Vec<i64>> = rows.iter().map(|r| pad(&vec![1; r.0.len()], 0)).collect();
        let padded = model.forward(BertInput::from_rows(&ids, &types, &mask, &device), false);
        let input = PackedInput::<B>::from_rows(&rows, &device);
        let packed = model.forward_packed(input.clone());
        let host = |t: Tensor<B, 2>| t.into_data().to_vec::<f32>().expect("f32");
        let width = config().hidden_size;
        let got = host(packed.last_hidden_state.clone());
        let want = host(padded.last_hidden_state.clone().reshape([3 * seq, width]));
        let mut at = 0;
        for (r, row) in rows.iter().enumerate() {
            for t in 0..row.0.len() {
                for h in 0..width {
                    let (a, b) = (got[(at + t) * width + h], want[(r * seq + t) * width + h]);
                    assert!((a - b).abs() < 1e-5, "row {r} token {t}: {a} vs {b}");
                }
            }
            at += row.0.len();
        }
        let close = |a: Vec<f32>, b: Vec<f32>, what: &str| {
            let d = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            assert!(d < 1e-5, "{what}: {d}");
        };
        close(
            host(packed.pooler_output.expect("pooler")),
            host(padded.pooler_output.expect("pooler")),
            "pooler",
        );
        let mask =
            Tensor::<B, 1, Int>::from_data(TensorData::new(mask.concat(), [3 * seq]), &device)
                .reshape([3, seq]);
        close(
            host(packed_mean(packed.last_hidden_state, &input.lengths)),
            host(masked_mean(padded.last_hidden_state, mask)),
            "mean",
        );
    }

    /// Enough short sequences that the mean runs in several blocks: each block's means equal
    /// the per-sequence means computed directly, and the first rows are the sequences' first.
    #[test]
    fn packed_mean_over_many_blocks() {
        let device = Default::default();
        let lengths: Vec<usize> = (0..3000).map(|i| 1 + i % 5).collect();
        let total: usize = lengths.iter().sum();
        assert!(lengths.len() * total > 4 * MEAN_BLOCK, "several blocks");
        let width = 3;
        let values: Vec<f32> = (0..total * width).map(|i| (i % 17) as f32 - 8.0).collect();
        let hidden =
            Tensor::<Flex, 2>::from_data(TensorData::new(values.clone(), [total, width]), &device);
        let means = packed_mean(hidden.clone(), &lengths)
            .into_data()
            .to_vec::<f32>()
            .expect("f32");
        let firsts = packed_first(hidden, &lengths)
            .into_data()
            .to_vec::<f32>()
            .expect("f32");
        assert_eq!(means.len(), lengths.len() * width);
        let mut start = 0;
        for (i, &len) in lengths.iter().enumerate() {
            for h in 0..width {
                let want = (start..start + len)
                    .map(|r| values[r * width + h])
                    .sum::<f32>()
                    / len as f32;
                let got = means[i * width + h];
                assert!((got - want).abs() < 1e-5, "sequence {i}: {got} vs {want}");
                assert_eq!(firsts[i * width + h], values[start * width + h]);
            }
            start += len;
        }
    }

    #[test]
    fn the_fused_packed_forward_equals_the_padded_one() {
        let device = Default::default();
        packed_equals_padded(&BertModel::<Flex>::new(&config(), true, &device));
    }

    #[test]
    fn the_generic_packed_forward_equals_the_padded_one() {
        let device = Default::default();
        packed_equals_padded(&BertModel::<Autodiff<Flex>>::new(&config(), true, &device));
    }
}
