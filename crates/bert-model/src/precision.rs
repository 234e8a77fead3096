//! Mixed precision: f32 master weights, a bf16/f16 copy to compute with.
//!
//! [`compute_copy`] casts every float parameter of a module to a half dtype except LayerNorm's,
//! inside the autodiff graph: the forward pass then runs its matrix products in bf16/f16, the
//! modules of this crate keep LayerNorm and the attention softmax in f32 (as PyTorch's autocast
//! does), and `loss.backward()` carries the gradients back through the casts to the f32 master
//! parameters, which the optimizer updates in f32. Losses should be computed in f32 (cast the
//! logits first).
//!
//! ```
//! use burn::backend::{Autodiff, Flex};
//! use burn::tensor::DType;
//! use bert_model::{BertConfig, BertModel, precision::compute_copy};
//!
//! type B = Autodiff<Flex>;
//! let device = Default::default();
//! let mut config = BertConfig::tiny();
//! config.vocab_size = 64;
//! let master = BertModel::<B>::new(&config, false, &device);
//! let half = compute_copy(&master, DType::BF16);
//! assert_eq!(half.encoder.layer[0].intermediate.dense.weight.val().dtype(), DType::BF16);
//! assert_eq!(half.embeddings.layer_norm.gamma.val().dtype(), DType::F32);
//! ```

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, Tensor};

/// Casts float parameters to `dtype`, leaving those inside a `LayerNorm` as they are.
#[derive(Debug)]
struct CastParams {
    dtype: DType,
    /// Nesting depth inside LayerNorm modules.
    in_layer_norm: usize,
}

impl<B: Backend> ModuleMapper<B> for CastParams {
    fn enter_module(&mut self, _name: &str, container_type: &str) {
        if container_type == "Struct:LayerNorm" || self.in_layer_norm > 0 {
            self.in_layer_norm += 1;
        }
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.in_layer_norm = self.in_layer_norm.saturating_sub(1);
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        Param::from_mapped_value(id, self.cast(tensor), mapper)
    }
}

impl CastParams {
    /// `tensor` in the copy's dtype, or as it is inside a LayerNorm.
    fn cast<B: Backend, const D: usize>(&self, tensor: Tensor<B, D>) -> Tensor<B, D> {
        if self.in_layer_norm > 0 {
            tensor
        } else {
            tensor.cast(self.dtype)
        }
    }
}

/// A copy of `module` whose float parameters (LayerNorm's excepted) are cast to `dtype`, still
/// connected to the originals in the autodiff graph (see the module docs). With `DType::F32`
/// on an f32 module it is a plain clone.
pub fn compute_copy<B: Backend, M: Module<B>>(module: &M, dtype: DType) -> M {
    module.clone().map(&mut CastParams {
        dtype,
        in_layer_norm: 0,
    })
}

/// Casts float parameters to `dtype` (LayerNorm's excepted) as new autodiff leaves: detached
/// from the originals, with their ids and `require_grad`.
#[derive(Debug)]
struct LeafParams {
    cast: CastParams,
}

impl<B: AutodiffBackend> ModuleMapper<B> for LeafParams {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        <CastParams as ModuleMapper<B>>::enter_module(&mut self.cast, name, container_type);
    }

    fn exit_module(&mut self, name: &str, container_type: &str) {
        <CastParams as ModuleMapper<B>>::exit_module(&mut self.cast, name, container_type);
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let require_grad = tensor.is_require_grad();
        let inner = self.cast.cast(tensor.inner());
        let leaf = Tensor::<B, D>::from_inner(inner).set_require_grad(require_grad);
        Param::from_mapped_value(id, leaf, mapper)
    }
}

/// The same copy as [`compute_copy`], but as autodiff leaves of its own (same parameter ids)
/// instead of nodes hanging off the originals: a loss's gradients are then taken with respect
/// to the copy (in its dtype), and one copy can serve several backward passes (the
/// micro-batches of an optimizer step) without being cast again. The caller casts the
/// gradients to the master's dtype; they are the ones [`compute_copy`] gives, value for value
/// (the backward of a cast is the cast back).
pub fn compute_leaves<B: AutodiffBackend, M: Module<B>>(module: &M, dtype: DType) -> M {
    module.clone().map(&mut LeafParams {
        cast: CastParams {
            dtype,
            in_layer_norm: 0,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BertConfig, BertForSequenceClassification, BertInput};
    use burn::backend::{Autodiff, Flex};
    use burn::module::Param;
    use burn::optim::GradientsParams;
    use burn::tensor::{Int, TensorData};

    type B = Autodiff<Flex>;

    fn model() -> (BertForSequenceClassification<B>, BertConfig) {
        let mut config = BertConfig::tiny();
        config.vocab_size = 50;
        config.num_labels = Some(3);
        config.hidden_dropout_prob = 0.0;
        config.attention_probs_dropout_prob = 0.0;
        let device = Default::default();
        <B as Backend>::seed(&device, 7);
        (BertForSequenceClassification::new(&config, &device), config)
    }

    fn input() -> BertInput<B> {
        let device = Default::default();
        let ids = Tensor::<B, 2, Int>::from_data(
            TensorData::new(vec![2i64, 7, 9, 11, 3, 2, 8, 3, 0, 0], [2, 5]),
            &device,
        );
        let mask = Tensor::<B, 2, Int>::from_data(
            TensorData::new(vec![1i64, 1, 1, 1, 1, 1, 1, 1, 0, 0], [2, 5]),
            &device,
        );
        BertInput::new(ids).with_attention_mask(mask)
    }

    #[test]
    fn bf16_forward_follows_f32_and_gradients_reach_the_f32_weights() {
        let (master, _) = model();
        let full = master.forward(input(), false).0;
        let half = compute_copy(&master, DType::BF16);
        let logits = half.forward(input(), false).0;
        assert_eq!(logits.dtype(), DType::BF16);
        let logits = logits.cast(DType::F32);
        let diff: f32 = (logits.clone() - full.clone()).abs().max().into_scalar();
        let scale: f32 = full.abs().max().into_scalar();
        // bf16 keeps 8 bits of mantissa: ~0.4 % per rounding, a few roundings deep.
        assert!(
            diff <= 0.05 * scale.max(1.0),
            "bf16 {diff} vs scale {scale}"
        );

        let grads = logits.sum().backward();
        let grads = GradientsParams::from_grads(grads, &master);
        let weight: &Param<Tensor<B, 2>> = &master.classifier.weight;
        let g = grads
            .get::<Flex, 2>(weight.id)
            .expect("the f32 classifier weight has a gradient");
        assert_eq!(g.dtype(), DType::F32);
        let gamma = &master.bert.embeddings.layer_norm.gamma;
        assert!(grads.get::<Flex, 1>(gamma.id).is_some());
        let word = &master.bert.embeddings.word_embeddings.weight;
        assert_eq!(
            grads.get::<Flex, 2>(word.id).expect("embeddings").dtype(),
            DType::F32
        );
    }

    /// Leaves give the gradients the connected copy gives, bit for bit, and serve two backward
    /// passes.
    #[test]
    fn leaves_give_the_gradients_of_the_connected_copy() {
        let (master, _) = model();
        let connected = compute_copy(&master, DType::BF16);
        let grads = connected
            .forward(input(), false)
            .0
            .cast(DType::F32)
            .sum()
            .backward();
        let expected = GradientsParams::from_grads(grads, &master);
        let leaves = compute_leaves(&master, DType::BF16);
        assert_eq!(leaves.classifier.weight.val().dtype(), DType::BF16, "cast");
        for _ in 0..2 {
            let grads = leaves
                .forward(input(), false)
                .0
                .cast(DType::F32)
                .sum()
                .backward();
            let got = GradientsParams::from_grads(grads, &leaves);
            let ids = [
                master.classifier.weight.id,
                master.bert.embeddings.word_embeddings.weight.id,
                master.bert.encoder.layer[0]
                    .attention
                    .self_attn
                    .query
                    .weight
                    .id,
            ];
            for id in ids {
                let e = expected.get::<Flex, 2>(id).expect("expected gradient");
                let g = got.get::<Flex, 2>(id).expect("leaf gradient");
                assert_eq!(g.dtype(), DType::BF16);
                assert_eq!(g.cast(DType::F32).into_data(), e.into_data());
            }
            let gamma = master.bert.embeddings.layer_norm.gamma.id;
            let e = expected.get::<Flex, 1>(gamma).expect("expected gamma");
            let g = got.get::<Flex, 1>(gamma).expect("leaf gamma");
            assert_eq!(g.into_data(), e.into_data());
        }
        assert!(
            master
                .classifier
                .weight
                .val()
                .grad(&leaves.forward(input(), false).0.sum().backward())
                .is_none(),
            "the master is not in the leaves' graph"
        );
    }

    #[test]
    fn f32_copy_is_the_same_model() {
        let (master, _) = model();
        let copy = compute_copy(&master, DType::F32);
        let a = master.forward(input(), false).0.into_data();
        let b = copy.forward(input(), false).0.into_data();
        assert_eq!(a, b);
    }
}
