//! Losses of the task heads, as Hugging Face computes them (`torch.nn.CrossEntropyLoss`).

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Tensor};

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
