//! Fused training ops for `Autodiff<Flex>` in f32, each with its own backward.
//!
//! Under autodiff Burn composes softmax, log-softmax, the cross-entropy and LayerNorm from
//! elementwise ops (max, subtract, exp, sum, divide, gather, …), each a pass over memory
//! forward and again backward, and flex runs elementwise ops on one thread. These ops do each
//! chain in one row-parallel pass forward and one backward:
//!
//! | op | replaces (forward and backward) |
//! |---|---|
//! | [`masked_softmax`] | `softmax(scores · scale + mask_bias)` (attention probabilities) |
//! | [`cross_entropy`] | `-mean(log_softmax(logits)[target])` |
//! | [`gelu`] | exact GELU (flex's is a scalar `erf` on one thread, both ways) |
//! | [`layer_norm`] | Burn's composed LayerNorm (mean, centre, variance, divide, scale, shift) |
//! | [`split_heads`], [`merge_heads`] | `reshape` + `swap_dims(1, 2)`, copied by each matmul and backward `reshape` |
//! | [`dense`] | `Linear` (matmul + bias): GEMMs on buffers of their own, forward and backward, without flex's copies around each matmul output |
//!
//! [`crate::ops`] calls them for `Autodiff<Flex>` tensors in f32 and Burn's ops otherwise;
//! tests compare values and gradients of both. Module `forward` holds the ops and their forward
//! loops, `backward` the recorded backward steps and their loops.

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::ops::{Backward, OpsKind};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorKind, TensorPrimitive};
use burn_flex::{Flex, FlexTensor};
use pulp::{Arch, Simd, WithSimd};

use super::retype;

mod backward;
mod forward;
#[cfg(test)]
mod tests;

pub(crate) use forward::{
    cross_entropy, dense, gelu, layer_norm, masked_softmax, merge_heads, split_heads,
};

/// The autodiff backend these ops are written for (Burn's default checkpointing: none).
type Ad = Autodiff<Flex>;

/// Rows handed to one rayon task by the row kernels.
const ROWS_PER_TASK: usize = 64;

/// Elements handed to one rayon task by the elementwise kernels.
const ELEMENTS_PER_TASK: usize = 1 << 14;

/// A tensor of `B` as the `Autodiff<Flex>` tensor it is (`crate::ops` checks), and back.
fn to_ad<B: Backend, const D: usize, K>(x: Tensor<B, D, K>) -> Tensor<Ad, D, K>
where
    K: TensorKind<B> + TensorKind<Ad> + 'static,
{
    retype(
        x,
        "fused training ops take Autodiff<Flex> tensors (see crate::ops)",
    )
}

fn from_ad<B: Backend, const D: usize>(x: Tensor<Ad, D>) -> Tensor<B, D> {
    retype(
        x,
        "fused training ops return Autodiff<Flex> tensors (see crate::ops)",
    )
}

/// Runs `forward` on the inner flex tensor of `x` and records `Op` with the state it returns
/// as the backward of the result (nothing is recorded when `x` needs no gradient).
fn record<Op, S, const D: usize, const R: usize>(
    op: Op,
    x: Tensor<Ad, D>,
    forward: impl FnOnce(FlexTensor) -> (FlexTensor, S),
) -> Tensor<Ad, R>
where
    Op: Backward<Flex, 1, State = S>,
    S: Clone + Send + std::fmt::Debug + 'static,
{
    let x = x.into_primitive().tensor();
    let node = x.node.clone();
    let (out, state) = forward(x.primitive.to_contiguous());
    let out = match op
        .prepare::<NoCheckpointing>([node])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(state, out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

// The loop bodies, as `Kernel`s run through pulp's run-time dispatch: `vectorized` calls
// them inside a function compiled for the CPU's best SIMD level (AVX-512, AVX2 + FMA, …),
// into which their `#[inline(always)]` bodies are inlined, so the loops vectorise to its
// width. Reductions go through `lanes` (fixed order, whatever the width).

/// A loop body for [`vectorized`].
trait Kernel {
    fn run(self);
}

struct Dispatch<K>(K);

impl<K: Kernel> WithSimd for Dispatch<K> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: Simd>(self, _: S) {
        self.0.run()
    }
}

fn vectorized(kernel: impl Kernel) {
    Arch::new().dispatch(Dispatch(kernel))
}
