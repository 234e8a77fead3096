//! The generic implementation of each op: Burn's tensor ops, on any backend and dtype.

use burn::nn::Linear;
use burn::tensor::activation::{gelu, gelu_approximate, log_softmax, relu, sigmoid, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Distribution, Int, Tensor, TensorPrimitive};

use crate::config::HiddenAct;

/// `linear.forward(x)` for `x: [batch_size, seq_length, d_input]`, run as one
/// `[batch_size * seq_length, d_input]` matmul. Burn's `Linear` on a rank-3 input broadcasts
/// the weight into a batched matmul of `batch_size` small products, which CPU backends run
/// one sequence at a time (packing the weight for each); one 2-D product lets the GEMM split
/// the rows over every core. Same result, any backend.
pub(crate) fn dense<B: Backend>(linear: &Linear<B>, x: Tensor<B, 3>) -> Tensor<B, 3> {
    let [batch, seq, d_input] = x.dims();
    let y = linear.forward(x.reshape([batch * seq, d_input]));
    let d_output = y.dims()[1];
    y.reshape([batch, seq, d_output])
}

/// A `hidden_act` activation (`Gelu`: exact, through `erf`).
pub(crate) fn activation<B: Backend, const D: usize>(
    act: HiddenAct,
    x: Tensor<B, D>,
) -> Tensor<B, D> {
    match act {
        // Burn 0.21's GELU backward (all backends but flex) is the derivative of the tanh
        // approximation, off by up to ~1e-3 from exact GELU's; under autodiff, GELU composed
        // from `erf` differentiates exactly.
        HiddenAct::Gelu if B::ad_enabled(&x.device()) => gelu_composed(x),
        HiddenAct::Gelu => gelu(x),
        HiddenAct::GeluTanh => gelu_approximate(x),
        HiddenAct::Relu => relu(x),
        HiddenAct::Silu => x.clone() * sigmoid(x),
    }
}

/// Exact GELU, `x · (1 + erf(x / √2)) / 2`, in elementwise ops (so its gradient is exact).
pub(crate) fn gelu_composed<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let cdf = (x.clone() * std::f64::consts::FRAC_1_SQRT_2)
        .erf()
        .add_scalar(1.0)
        * 0.5;
    x * cdf
}

/// `[batch_size, seq_length, heads · head_dim]` → `[batch_size, heads, seq_length, head_dim]`
/// (a strided view).
pub(crate) fn split_heads<B: Backend>(x: Tensor<B, 3>, heads: usize) -> Tensor<B, 4> {
    let [batch, seq, width] = x.dims();
    x.reshape([batch, seq, heads, width / heads])
        .swap_dims(1, 2)
}

/// `[batch_size, heads, seq_length, head_dim]` → `[batch_size, seq_length, heads · head_dim]`.
pub(crate) fn merge_heads<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 3> {
    let [batch, heads, seq, head_dim] = x.dims();
    x.swap_dims(1, 2).reshape([batch, seq, heads * head_dim])
}

/// `softmax(scores / √head_dim + mask_bias)` over the last dimension, the softmax in f32 under
/// mixed precision (as autocast), then back to the scores' dtype.
pub(crate) fn masked_softmax<B: Backend>(
    scores: Tensor<B, 4>,
    mask_bias: Tensor<B, 4>,
    head_dim: usize,
) -> Tensor<B, 4> {
    let dtype = scores.dtype();
    let scores = scores / (head_dim as f64).sqrt() + mask_bias.cast(dtype);
    if dtype == DType::F32 {
        softmax(scores, 3)
    } else {
        softmax(scores.cast(DType::F32), 3).cast(dtype)
    }
}

/// The backend's LayerNorm over the last dimension.
pub(crate) fn layer_norm<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    gamma: Tensor<B, 1>,
    beta: Option<Tensor<B, 1>>,
    epsilon: f64,
) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(B::layer_norm(
        x.into_primitive().tensor(),
        gamma.into_primitive().tensor(),
        beta.map(|b| b.into_primitive().tensor()),
        epsilon,
    )))
}

/// `-mean(log_softmax(logits)[target])`: `logits` `[n, classes]`, `targets` `[n]`, a `[1]`
/// tensor.
pub(crate) fn cross_entropy<B: Backend>(
    logits: Tensor<B, 2>,
    targets: Tensor<B, 1, Int>,
) -> Tensor<B, 1> {
    let [n, _] = logits.dims();
    log_softmax(logits, 1)
        .gather(1, targets.reshape([n, 1]))
        .mean()
        .neg()
}

/// `1 / keep` with probability `keep`, else 0, shaped and typed as `like`, from the backend's
/// RNG.
pub(crate) fn dropout_mask<B: Backend, const D: usize>(
    like: &Tensor<B, D>,
    keep: f64,
) -> Tensor<B, D> {
    like.random_like(Distribution::Bernoulli(keep))
        .mul_scalar(1.0 / keep)
}

/// One AdamW update (see [`super::adamw`]), in Burn's tensor ops.
pub(crate) fn adamw<B: Backend>(
    value: Tensor<B, 1>,
    grad: Tensor<B, 1>,
    m: Tensor<B, 1>,
    v: Tensor<B, 1>,
    scale: Option<Tensor<B, 1>>,
    step: &super::AdamWStep,
) -> [Tensor<B, 1>; 3] {
    let mut g = grad.cast(value.dtype());
    if step.grad_scale != 1.0 {
        g = g * step.grad_scale;
    }
    if let Some(scale) = scale {
        g = g * scale;
    }
    let m = m * step.beta1 + g.clone() * (1.0 - step.beta1);
    let v = v * step.beta2 + g.powi_scalar(2) * (1.0 - step.beta2);
    let t = step.step.min(i32::MAX as u64) as i32;
    let m_hat = m.clone() / (1.0 - step.beta1.powi(t));
    let v_hat = v.clone() / (1.0 - step.beta2.powi(t));
    let mut next = value.clone() - m_hat / (v_hat.sqrt() + step.epsilon) * step.lr;
    if step.weight_decay > 0.0 {
        // Decoupled decay on the pre-update value (torch.optim.AdamW).
        next = next - value * (step.lr * step.weight_decay);
    }
    [next, m, v]
}
