//! Losses of the task heads, as Hugging Face computes them (`torch.nn.CrossEntropyLoss`), and
//! BERT's pretraining objective ([`BertForPreTraining::pretraining_loss`]).

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Tensor};

use crate::heads::BertForPreTraining;
use crate::model::BertInput;
use crate::ops;

/// Mean cross-entropy of `logits` `[n, classes]` against `targets` `[n]` (class ids in
/// `0..classes`), as a `[1]` tensor, computed in f32 whatever the logits' precision.
///
/// On `Autodiff<Flex>` (crate feature `flex`) this is one fused op with its own backward
/// (see [`crate::ops`]); elsewhere `-mean(log_softmax(logits)[target])` in Burn's ops.
///
/// ```
/// use bert_model::loss::cross_entropy;
/// use burn::backend::Flex;
/// use burn::tensor::{Int, Tensor};
///
/// let device = Default::default();
/// let logits = Tensor::<Flex, 2>::from_floats([[0.0, 0.0], [2.0, 0.0]], &device);
/// let targets = Tensor::<Flex, 1, Int>::from_ints([1, 0], &device);
/// let loss = cross_entropy(logits, targets).into_scalar();
/// // (ln 2 + ln(1 + e⁻²)) / 2
/// assert!((loss - 0.4100).abs() < 1e-4);
/// ```
pub fn cross_entropy<B: Backend>(logits: Tensor<B, 2>, targets: Tensor<B, 1, Int>) -> Tensor<B, 1> {
    ops::cross_entropy(logits.cast(DType::F32), targets)
}

/// What [`BertForPreTraining::pretraining_loss`] is trained against: the masked positions of a
/// batch and their original tokens, and the next-sentence labels.
#[derive(Debug, Clone)]
pub struct PreTrainingTargets<B: Backend> {
    /// `[n]` flat indices into `batch · seq` of the masked positions (may be empty).
    pub mlm_positions: Tensor<B, 1, Int>,
    /// `[n]` original token ids at those positions.
    pub mlm_labels: Tensor<B, 1, Int>,
    /// `[batch]` 0 ("B follows A") or 1, or `None` to train MLM only.
    pub next_sentence_labels: Option<Tensor<B, 1, Int>>,
}

/// Losses and hit counts of one pretraining batch, all on the device (nothing is read back).
#[derive(Debug, Clone)]
pub struct PreTrainingLoss<B: Backend> {
    /// `[1]`: MLM loss + NSP loss, what is differentiated.
    pub loss: Tensor<B, 1>,
    /// `[1]` mean MLM cross-entropy, `None` when the batch has no masked position.
    pub mlm_loss: Option<Tensor<B, 1>>,
    /// `[1]` masked positions whose most likely token is the original one.
    pub mlm_correct: Option<Tensor<B, 1, Int>>,
    /// `[1]` mean NSP cross-entropy, `None` without next-sentence labels.
    pub nsp_loss: Option<Tensor<B, 1>>,
    /// `[1]` rows whose NSP prediction is right.
    pub nsp_correct: Option<Tensor<B, 1, Int>>,
}

/// `[1]` rows of `logits` `[n, classes]` whose largest logit is at `targets` `[n]`.
fn hits<B: Backend>(logits: Tensor<B, 2>, targets: Tensor<B, 1, Int>) -> Tensor<B, 1, Int> {
    let [n, _] = logits.dims();
    logits.argmax(1).reshape([n]).equal(targets).int().sum()
}

impl<B: Backend> BertForPreTraining<B> {
    /// BERT's pretraining objective on one batch: the MLM cross-entropy over the masked
    /// positions (the vocabulary projection runs only there, see
    /// [`BertForPreTraining::mlm_logits_at`]) plus the NSP cross-entropy on the pooled output,
    /// as transformers' `BertForPreTraining` computes `loss` when given `labels` and
    /// `next_sentence_label`.
    ///
    /// - `input`: the batch `[batch, seq]`
    /// - `targets`: masked positions and labels `[n]`, NSP labels `[batch]`
    pub fn pretraining_loss(
        &self,
        input: BertInput<B>,
        targets: PreTrainingTargets<B>,
    ) -> PreTrainingLoss<B> {
        let device = input.input_ids.device();
        let out = self.bert.forward(input, false);
        let mut loss = Tensor::<B, 1>::zeros([1], &device);
        let (mut mlm_loss, mut mlm_correct) = (None, None);
        if targets.mlm_positions.dims()[0] > 0 {
            let logits = self.mlm_logits_at(out.last_hidden_state, targets.mlm_positions);
            mlm_correct = Some(hits(logits.clone(), targets.mlm_labels.clone()));
            let mlm = cross_entropy(logits, targets.mlm_labels);
            loss = loss + mlm.clone();
            mlm_loss = Some(mlm);
        }
        let (mut nsp_loss, mut nsp_correct) = (None, None);
        if let (Some(pooled), Some(labels)) = (out.pooler_output, targets.next_sentence_labels) {
            let logits = self.cls.seq_relationship.forward(pooled);
            nsp_correct = Some(hits(logits.clone(), labels.clone()));
            let nsp = cross_entropy(logits, labels);
            loss = loss + nsp.clone();
            nsp_loss = Some(nsp);
        }
        PreTrainingLoss {
            loss,
            mlm_loss,
            mlm_correct,
            nsp_loss,
            nsp_correct,
        }
    }
}
