//! Host batches to Burn tensors on a device: the only place in this crate that builds tensors.
//! (Burn's `Batcher` trait lives behind its `dataset` feature; these conversions are what a
//! `Batcher` implementation calls.)

use bert_model::BertInput;
use burn::tensor::backend::Backend;
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::batch::PaddedBatch;
use crate::pretraining::PretrainingBatch;

/// `[rows, seq]` integers to an `Int` tensor.
pub fn int_tensor<B: Backend>(rows: &[Vec<i64>], device: &Device<B>) -> Tensor<B, 2, Int> {
    let seq = rows.first().map_or(0, Vec::len);
    let flat: Vec<i64> = rows.iter().flatten().copied().collect();
    Tensor::from_data(TensorData::new(flat, [rows.len(), seq]), device)
}

/// The model input of a padded batch.
pub fn bert_input<B: Backend>(batch: &PaddedBatch, device: &Device<B>) -> BertInput<B> {
    BertInput::from_rows(
        &batch.input_ids,
        &batch.token_type_ids,
        &batch.attention_mask,
        device,
    )
}

/// A pretraining batch on a device.
#[derive(Debug, Clone)]
pub struct PretrainingTensors<B: Backend> {
    /// Model input.
    pub input: BertInput<B>,
    /// `[batch, seq]` MLM labels, −100 where nothing is predicted.
    pub mlm_labels: Tensor<B, 2, Int>,
    /// `[batch]` NSP labels (−100 when NSP is off).
    pub next_sentence_labels: Tensor<B, 1, Int>,
}

impl PretrainingBatch {
    /// The batch as tensors on `device`.
    pub fn to_tensors<B: Backend>(&self, device: &Device<B>) -> PretrainingTensors<B> {
        PretrainingTensors {
            input: BertInput::from_rows(
                &self.input_ids,
                &self.token_type_ids,
                &self.attention_mask,
                device,
            ),
            mlm_labels: int_tensor(&self.mlm_labels, device),
            next_sentence_labels: Tensor::from_data(
                TensorData::new(
                    self.next_sentence_labels.clone(),
                    [self.next_sentence_labels.len()],
                ),
                device,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    #[test]
    fn batches_become_tensors_of_the_same_values() {
        let device = Default::default();
        let batch = PretrainingBatch {
            input_ids: vec![vec![2, 4, 3, 0], vec![2, 7, 8, 3]],
            token_type_ids: vec![vec![0; 4], vec![0, 0, 0, 0]],
            attention_mask: vec![vec![1, 1, 1, 0], vec![1; 4]],
            mlm_labels: vec![vec![-100, 9, -100, -100], vec![-100; 4]],
            next_sentence_labels: vec![0, 1],
            seq_len: 4,
        };
        let t = batch.to_tensors::<Flex>(&device);
        assert_eq!(t.input.input_ids.dims(), [2, 4]);
        let labels: Vec<i64> = t
            .mlm_labels
            .into_data()
            .convert::<i64>()
            .to_vec()
            .expect("i64");
        assert_eq!(labels[1], 9);
        let nsp: Vec<i64> = t
            .next_sentence_labels
            .into_data()
            .convert::<i64>()
            .to_vec()
            .expect("i64");
        assert_eq!(nsp, vec![0, 1]);
    }
}
