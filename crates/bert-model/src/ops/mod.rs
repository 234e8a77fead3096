//! The ops of BERT's forward pass, and the one place that chooses how each runs.
//!
//! The modules of this crate (the encoder, [`crate::layer_norm::LayerNorm`],
//! [`crate::dropout::Dropout`], [`crate::loss::cross_entropy`]) call an op here and never
//! choose. Each op takes a fused kernel ([`crate::kernels`], crate feature `flex`) where one
//! computes the same function, and its generic implementation in Burn's tensor ops (module
//! `generic`, any backend and dtype) everywhere else:
//!
//! | op | fused where (f32 tensors, [`fused_kernels`] on) |
//! |---|---|
//! | `self_attention` (whole, given the q/k/v projections) | `Flex` (inference); `Autodiff<Wgpu>`/`Autodiff<Cuda>` (training, dropout included, feature `cube`); other f32 inference: Burn's `attention` op (flash attention on CubeCL backends); other training: composed of the three ops below (fused under `Autodiff<Flex>`) |
//! | `split_heads`, `merge_heads`, `masked_softmax` | `Autodiff<Flex>` |
//! | `dense_activation` (dense, then `hidden_act`) | `Flex`, for exact GELU; bias + GELU: `Autodiff<Wgpu>`/`Autodiff<Cuda>` |
//! | `dense_add_layer_norm` (dense, dropout, residual add, LayerNorm) | `Flex`; residual add + LayerNorm: `Autodiff<Wgpu>`/`Autodiff<Cuda>` |
//! | `activation` | `Autodiff<Flex>`, for exact GELU |
//! | `layer_norm` | `Autodiff<Flex>`, `Autodiff<Wgpu>`/`Autodiff<Cuda>` |
//! | `cross_entropy` | `Autodiff<Flex>`, `Autodiff<Wgpu>`/`Autodiff<Cuda>` |
//! | [`adamw`] (the optimizer update) | `Wgpu`/`Cuda` (the inner backend of training) |
//! | `dropout_mask` | the flex device (`Flex` or `Autodiff<Flex>`) |
//!
//! (`Wgpu`, `Cuda`: Burn's fused CubeCL backends; their kernels are in `crate::cube`, crate
//! features `wgpu` and `cuda`.)
//!
//! An op whose fused path does not apply runs its generic implementation, which is composed of
//! the other ops where it can be (so, under `Autodiff<Flex>`, `dense_add_layer_norm` still
//! takes the fused `layer_norm`). Each backend's kernels plug in the same way: a test of the
//! tensor's backend and dtype in front of the generic call.

use std::sync::atomic::{AtomicBool, Ordering};

use burn::nn::Linear;
use burn::tensor::DType;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};

use crate::config::HiddenAct;
use crate::dropout::Dropout;
#[cfg(feature = "flex")]
use crate::kernels;
use crate::layer_norm::LayerNorm;

pub(crate) mod generic;
#[cfg(test)]
mod tests;

static FUSED_KERNELS: AtomicBool = AtomicBool::new(true);

/// Turns the fused kernels on or off for the whole process (on by default; off measures what
/// they bring: `bert bench encode --no-fused-kernels`, `bert bench train --no-fused-kernels`).
/// Also reachable as `bert_model::kernels::set_enabled`.
///
/// ```
/// bert_model::ops::set_fused_kernels(false);
/// assert!(!bert_model::ops::fused_kernels());
/// // The same switch under the `kernels` names.
/// assert!(!bert_model::kernels::enabled());
/// bert_model::kernels::set_enabled(true);
/// assert!(bert_model::ops::fused_kernels());
/// ```
pub fn set_fused_kernels(on: bool) {
    FUSED_KERNELS.store(on, Ordering::Relaxed);
}

/// Whether the fused kernels may run (see [`set_fused_kernels`]). Also reachable as
/// `bert_model::kernels::enabled`.
pub fn fused_kernels() -> bool {
    FUSED_KERNELS.load(Ordering::Relaxed)
}

/// Whether the fused inference kernels take `x`: a flex f32 tensor (never an autodiff one).
#[cfg(feature = "flex")]
fn fused_inference<B: Backend, const D: usize>(x: &Tensor<B, D>) -> bool {
    fused_kernels() && x.dtype() == DType::F32 && kernels::is_flex::<B>()
}

/// Whether the fused training ops take `x`: a tensor of `Autodiff<Flex>` in f32.
#[cfg(feature = "flex")]
fn fused_training<B: Backend, const D: usize>(x: &Tensor<B, D>) -> bool {
    fused_kernels() && x.dtype() == DType::F32 && kernels::is_autodiff_flex::<B>()
}

/// Whether the CubeCL training kernels take `x`: an f32 tensor of `Autodiff` over Burn's fused
/// wgpu or CUDA backend.
#[cfg(feature = "cube")]
fn cube_training<B: Backend, const D: usize>(x: &Tensor<B, D>) -> bool {
    fused_kernels() && x.dtype() == DType::F32 && crate::cube::is_autodiff_cube::<B>()
}

/// Whether the dropout mask for `x` is drawn on the host in parallel: an f32 tensor on the
/// flex device (autodiff or not).
#[cfg(feature = "flex")]
fn host_dropout<B: Backend, const D: usize>(x: &Tensor<B, D>) -> bool {
    fused_kernels() && x.dtype() == DType::F32 && kernels::on_flex_device::<B>()
}

/// `Linear` on `[batch_size, seq_length, d_in]` → `[batch_size, seq_length, d_out]`: the fused
/// training op under `Autodiff<Flex>` in f32 (a layer with a bias), Burn's `Linear` elsewhere.
pub(crate) fn dense<B: Backend>(linear: &Linear<B>, x: Tensor<B, 3>) -> Tensor<B, 3> {
    #[cfg(feature = "flex")]
    if fused_training(&x)
        && let Some(bias) = &linear.bias
    {
        return kernels::train::dense(linear.weight.val(), bias.val(), x);
    }
    generic::dense(linear, x)
}

/// Whether packed attention ([`crate::BertModel::forward_packed`]) runs as one fused kernel on
/// `B` (flex with the fused kernels on); elsewhere it runs sequence by sequence, which a
/// padded batch usually beats.
pub fn packed_attention_is_fused<B: Backend>() -> bool {
    #[cfg(feature = "flex")]
    {
        fused_kernels() && kernels::is_flex::<B>()
    }
    #[cfg(not(feature = "flex"))]
    {
        false
    }
}

/// Self-attention within each of several sequences packed one after the other, without
/// padding (inference: no dropout):
/// - `hidden`: `[1, total, H]`
/// - `lengths`: the sequences' lengths, summing to `total`
/// - returns `[1, total, H]`, each sequence's rows as [`self_attention`] gives them unpadded
pub(crate) fn self_attention_packed<B: Backend>(
    query: &Linear<B>,
    key: &Linear<B>,
    value: &Linear<B>,
    num_heads: usize,
    dropout: &Dropout,
    hidden: Tensor<B, 3>,
    lengths: &[usize],
) -> Tensor<B, 3> {
    #[cfg(feature = "flex")]
    if fused_inference(&hidden) {
        return kernels::infer::self_attention_packed(
            query, key, value, num_heads, hidden, lengths,
        );
    }
    // Elsewhere: each sequence on its own, unpadded.
    let [batch, _, width] = hidden.dims();
    let device = hidden.device();
    let mut parts = Vec::with_capacity(lengths.len());
    let mut start = 0;
    for &len in lengths.iter().filter(|&&len| len > 0) {
        let rows = hidden
            .clone()
            .slice([0..batch, start..start + len, 0..width]);
        let none_masked = Tensor::zeros([batch, 1, 1, len], &device);
        parts.push(self_attention(
            query,
            key,
            value,
            num_heads,
            dropout,
            rows,
            none_masked,
        ));
        start += len;
    }
    if parts.is_empty() {
        return hidden;
    }
    Tensor::cat(parts, 1)
}

/// Multi-head self-attention context (HF `BertSelfAttention`), dropout on the probabilities:
/// - `hidden`: `[batch_size, seq_length, H]`
/// - `mask_bias`: `[batch_size, 1, 1, seq_length]` (see [`crate::attention_mask_bias`])
/// - returns `[batch_size, seq_length, H]`
pub(crate) fn self_attention<B: Backend>(
    query: &Linear<B>,
    key: &Linear<B>,
    value: &Linear<B>,
    num_heads: usize,
    dropout: &Dropout,
    hidden: Tensor<B, 3>,
    mask_bias: Tensor<B, 4>,
) -> Tensor<B, 3> {
    #[cfg(feature = "flex")]
    if fused_inference(&hidden) {
        return kernels::infer::self_attention(query, key, value, num_heads, hidden, mask_bias);
    }
    let [batch, seq, width] = hidden.dims();
    #[cfg(feature = "cube")]
    if cube_training(&hidden)
        && mask_bias.dtype() == DType::F32
        && seq <= crate::cube::MAX_ATTENTION_SEQ
    {
        let q = dense(query, hidden.clone());
        let k = dense(key, hidden.clone());
        let v = dense(value, hidden);
        return crate::cube::attention(q, k, v, mask_bias, num_heads, dropout.prob);
    }
    let inference = !B::ad_enabled(&hidden.device()) && hidden.dtype() == DType::F32;
    let q = split_heads(dense(query, hidden.clone()), num_heads);
    let k = split_heads(dense(key, hidden.clone()), num_heads);
    let v = split_heads(dense(value, hidden), num_heads);
    if inference {
        // Burn's attention op: a flash-attention kernel on the CubeCL backends (the [T, T]
        // probabilities are never stored), matmul-softmax-matmul elsewhere. Training keeps
        // the composed ops below: they carry the dropout on the probabilities, and Burn
        // 0.21's op has no backward of its own. The padding (`mask_bias` at f32::MIN) becomes
        // a boolean mask, which gives the same probabilities (exp underflows to 0 either way).
        let padding = mask_bias
            .lower_elem(-1.0)
            .expand([batch, num_heads, seq, seq]);
        let context = burn::tensor::module::attention(
            q,
            k,
            v,
            Some(padding),
            None,
            burn::tensor::ops::AttentionModuleOptions::default(),
        );
        return merge_heads(context);
    }
    let probs = masked_softmax(q.matmul(k.transpose()), mask_bias, width / num_heads);
    merge_heads(dropout.forward(probs).matmul(v))
}

/// `[batch_size, seq_length, heads · head_dim]` → `[batch_size, heads, seq_length, head_dim]`.
pub(crate) fn split_heads<B: Backend>(x: Tensor<B, 3>, heads: usize) -> Tensor<B, 4> {
    #[cfg(feature = "flex")]
    if fused_training(&x) {
        return kernels::train::split_heads(x, heads);
    }
    generic::split_heads(x, heads)
}

/// `[batch_size, heads, seq_length, head_dim]` → `[batch_size, seq_length, heads · head_dim]`,
/// the inverse of [`split_heads`].
pub(crate) fn merge_heads<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 3> {
    #[cfg(feature = "flex")]
    if fused_training(&x) {
        return kernels::train::merge_heads(x);
    }
    generic::merge_heads(x)
}

/// Attention probabilities `softmax(scores / √head_dim + mask_bias)` over the last dimension:
/// `scores` `[batch_size, heads, seq_length, seq_length]` (`q kᵀ`), `mask_bias`
/// `[batch_size, 1, 1, seq_length]`; the softmax runs in f32 whatever the scores' dtype.
pub(crate) fn masked_softmax<B: Backend>(
    scores: Tensor<B, 4>,
    mask_bias: Tensor<B, 4>,
    head_dim: usize,
) -> Tensor<B, 4> {
    #[cfg(feature = "flex")]
    if fused_training(&scores) {
        let scale = 1.0 / (head_dim as f32).sqrt();
        return kernels::train::masked_softmax(scores, mask_bias, scale);
    }
    generic::masked_softmax(scores, mask_bias, head_dim)
}

/// `activation(dense(x))`: `[batch_size, seq_length, d_in]` → `[batch_size, seq_length, d_out]`.
pub(crate) fn dense_activation<B: Backend>(
    dense: &Linear<B>,
    act: HiddenAct,
    x: Tensor<B, 3>,
) -> Tensor<B, 3> {
    #[cfg(feature = "flex")]
    if act == HiddenAct::Gelu && fused_inference(&x) {
        return kernels::infer::dense_gelu(dense, x);
    }
    #[cfg(feature = "cube")]
    if act == HiddenAct::Gelu
        && cube_training(&x)
        && let Some(bias) = &dense.bias
    {
        let [batch, seq, d_input] = x.dims();
        let z = x.reshape([batch * seq, d_input]).matmul(dense.weight.val());
        let d_output = z.dims()[1];
        return crate::cube::bias_gelu(z, bias.val()).reshape([batch, seq, d_output]);
    }
    activation(act, self::dense(dense, x))
}

/// `layer_norm(dropout(dense(hidden)) + residual)`: `hidden` `[batch_size, seq_length, d_in]`,
/// `residual` and the result `[batch_size, seq_length, H]`.
pub(crate) fn dense_add_layer_norm<B: Backend>(
    dense: &Linear<B>,
    dropout: &Dropout,
    hidden: Tensor<B, 3>,
    residual: Tensor<B, 3>,
    layer_norm: &LayerNorm<B>,
) -> Tensor<B, 3> {
    #[cfg(feature = "flex")]
    if fused_inference(&hidden) {
        return kernels::infer::dense_add_layer_norm(dense, hidden, residual, layer_norm);
    }
    let x = dropout.forward(self::dense(dense, hidden));
    #[cfg(feature = "cube")]
    if cube_training(&x)
        && layer_norm.gamma.val().dtype() == DType::F32
        && let Some(beta) = &layer_norm.beta
    {
        let (gamma, epsilon) = (layer_norm.gamma.val(), layer_norm.epsilon);
        return crate::cube::layer_norm(x, Some(residual), gamma, beta.val(), epsilon);
    }
    layer_norm.forward(x + residual)
}

/// A `hidden_act` activation, elementwise on any shape.
pub(crate) fn activation<B: Backend, const D: usize>(
    act: HiddenAct,
    x: Tensor<B, D>,
) -> Tensor<B, D> {
    #[cfg(feature = "flex")]
    if act == HiddenAct::Gelu && fused_training(&x) {
        return kernels::train::gelu(x);
    }
    generic::activation(act, x)
}

/// LayerNorm over the last dimension: `(x − mean) / √(var + epsilon) · gamma + beta`, `x`
/// `[..., width]`, `gamma` and `beta` `[width]`, all of one dtype.
pub(crate) fn layer_norm<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    gamma: Tensor<B, 1>,
    beta: Option<Tensor<B, 1>>,
    epsilon: f64,
) -> Tensor<B, D> {
    #[cfg(feature = "flex")]
    if fused_training(&x) {
        return kernels::train::layer_norm(x, gamma, beta, epsilon);
    }
    #[cfg(feature = "cube")]
    if cube_training(&x) {
        if let Some(beta) = beta {
            return crate::cube::layer_norm(x, None, gamma, beta, epsilon);
        }
        return generic::layer_norm(x, gamma, None, epsilon);
    }
    generic::layer_norm(x, gamma, beta, epsilon)
}

/// Mean cross-entropy of `logits` `[n, classes]` against `targets` `[n]` (class ids), as a
/// `[1]` tensor.
pub(crate) fn cross_entropy<B: Backend>(
    logits: Tensor<B, 2>,
    targets: Tensor<B, 1, Int>,
) -> Tensor<B, 1> {
    #[cfg(feature = "flex")]
    if fused_training(&logits) {
        return kernels::train::cross_entropy(logits, targets);
    }
    #[cfg(feature = "cube")]
    if cube_training(&logits) {
        return crate::cube::cross_entropy(logits, targets);
    }
    generic::cross_entropy(logits, targets)
}

/// An inverted-dropout mask: `1 / keep` with probability `keep`, else 0, shaped and typed as
/// `like`, not tracked. Random draws come from the backend's RNG (on the flex device, one seed
/// from it for a counter-based generator), so `Backend::seed` decides the mask.
pub(crate) fn dropout_mask<B: Backend, const D: usize>(
    like: &Tensor<B, D>,
    keep: f64,
) -> Tensor<B, D> {
    if let Some(seed) = crate::dropout::next_thread_seed() {
        return crate::dropout::mask_from_seed(like, keep, seed);
    }
    #[cfg(feature = "flex")]
    if host_dropout(like) {
        return kernels::dropout::dropout_mask(like, keep);
    }
    generic::dropout_mask(like, keep)
}

/// The scalars of one AdamW update of one parameter tensor (torch.optim.AdamW).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWStep {
    /// Learning rate.
    pub lr: f64,
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Added to `√v̂`.
    pub epsilon: f64,
    /// Decoupled weight decay of this parameter (0 for one that does not decay).
    pub weight_decay: f64,
    /// The step number, from 1 (for the bias corrections).
    pub step: u64,
    /// What the gradient is multiplied by first (e.g. 1/k for a sum of k micro-batches).
    pub grad_scale: f64,
}

/// One AdamW update of a flattened parameter, as torch.optim.AdamW computes it: `grad`
/// multiplied by `grad_scale` and by `scale` (a `[1]` device tensor, e.g. the clip factor)
/// when given; the moments `m`, `v` updated; `value − lr · m̂ / (√v̂ + epsilon)`, minus
/// `lr · weight_decay · value` (decoupled, on the value before the step). All `[n]`; returns
/// `[next, m, v]`. One CubeCL kernel on Burn's fused wgpu/CUDA backends in f32, Burn's ops
/// elsewhere.
///
/// ```
/// use burn::backend::Flex;
/// use burn::tensor::Tensor;
/// use bert_model::ops::{adamw, AdamWStep};
///
/// let device = Default::default();
/// let value = Tensor::<Flex, 1>::from_floats([1.0, -2.0], &device);
/// let grad = Tensor::<Flex, 1>::from_floats([0.5, 0.5], &device);
/// let step = AdamWStep {
///     lr: 0.1, beta1: 0.9, beta2: 0.999, epsilon: 1e-8,
///     weight_decay: 0.0, step: 1, grad_scale: 1.0,
/// };
/// let [next, m, v] = adamw(value, grad, Tensor::zeros([2], &device), Tensor::zeros([2], &device), None, &step);
/// // The first step moves each value by lr against its gradient's sign.
/// let next: Vec<f32> = next.into_data().to_vec().unwrap();
/// assert!((next[0] - 0.9).abs() < 1e-6 && (next[1] + 2.1).abs() < 1e-6);
/// ```
pub fn adamw<B: Backend>(
    value: Tensor<B, 1>,
    grad: Tensor<B, 1>,
    m: Tensor<B, 1>,
    v: Tensor<B, 1>,
    scale: Option<Tensor<B, 1>>,
    step: &AdamWStep,
) -> [Tensor<B, 1>; 3] {
    #[cfg(feature = "cube")]
    if fused_kernels()
        && crate::cube::is_cube::<B>()
        && [&value, &grad, &m, &v]
            .iter()
            .all(|t| t.dtype() == DType::F32)
        && scale.as_ref().is_none_or(|s| s.dtype() == DType::F32)
    {
        let t = step.step.min(i32::MAX as u64) as i32;
        let scalars = crate::cube::AdamWScalars {
            grad_scale: step.grad_scale as f32,
            beta1: step.beta1 as f32,
            beta2: step.beta2 as f32,
            lr: step.lr as f32,
            epsilon: step.epsilon as f32,
            bias1: (1.0 - step.beta1.powi(t)) as f32,
            bias2: (1.0 - step.beta2.powi(t)) as f32,
            decay: (step.lr * step.weight_decay) as f32,
        };
        return crate::cube::adamw(value, grad, m, v, scale, scalars);
    }
    generic::adamw(value, grad, m, v, scale, step)
}
