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
//!
//! The model and the losses call them where [`active`] holds and Burn's ops otherwise; tests
//! compare values and gradients of both.

use std::any::TypeId;

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Shape, Tensor, TensorKind, TensorPrimitive};
use burn_flex::{Flex, FlexTensor};
use pulp::{Arch, Simd, WithSimd};
use rayon::prelude::*;

use super::flex::{from_vec, slice};
use super::{exp_f32, fold_lanes, gelu_f32, lanes, retype};

/// The autodiff backend these ops are written for (Burn's default checkpointing: none).
type Ad = Autodiff<Flex>;

/// Rows handed to one rayon task by the row kernels.
const ROWS_PER_TASK: usize = 64;

/// Elements handed to one rayon task by the elementwise kernels.
const ELEMENTS_PER_TASK: usize = 1 << 14;

/// Whether the fused training ops take `x`: a tensor of `Autodiff<Flex>` in f32, kernels on.
pub(crate) fn active<B: Backend, const D: usize>(x: &Tensor<B, D>) -> bool {
    super::enabled() && x.dtype() == DType::F32 && TypeId::of::<B>() == TypeId::of::<Ad>()
}

/// A tensor of `B` as the `Autodiff<Flex>` tensor it is (see [`active`]), and back.
fn to_ad<B: Backend, const D: usize, K>(x: Tensor<B, D, K>) -> Tensor<Ad, D, K>
where
    K: TensorKind<B> + TensorKind<Ad> + 'static,
{
    retype(
        x,
        "fused training ops take Autodiff<Flex> tensors (see active)",
    )
}

fn from_ad<B: Backend, const D: usize>(x: Tensor<Ad, D>) -> Tensor<B, D> {
    retype(
        x,
        "fused training ops return Autodiff<Flex> tensors (see active)",
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

/// Attention probabilities `softmax(scores · scale + mask_bias)` over the last dimension:
/// - `scores`: `[batch_size, heads, seq_length, seq_length]` (`q kᵀ`)
/// - `mask_bias`: `[batch_size, 1, 1, seq_length]`, not differentiated
/// - returns the probabilities, shaped as `scores`
///
/// Backward: `dscores = scale · p ⊙ (dp − Σⱼ dpⱼ pⱼ)`. Call only where [`active`] holds.
pub(crate) fn masked_softmax<B: Backend>(
    scores: Tensor<B, 4>,
    mask_bias: Tensor<B, 4>,
    scale: f32,
) -> Tensor<B, 4> {
    let [batch, heads, rows, seq] = scores.dims();
    assert_eq!(mask_bias.dims(), [batch, 1, 1, seq], "mask_bias shape");
    let mask = to_ad(mask_bias)
        .inner()
        .into_primitive()
        .tensor()
        .to_contiguous();
    let out = record(MaskedSoftmax { scale }, to_ad(scores), |scores| {
        let mut probs = vec![0f32; batch * heads * rows * seq];
        if seq > 0 {
            let (scores, mask) = (slice(&scores), slice(&mask));
            probs
                .par_chunks_mut(ROWS_PER_TASK * seq)
                .zip(scores.par_chunks(ROWS_PER_TASK * seq))
                .enumerate()
                .for_each(|(task, (probs, scores))| {
                    vectorized(SoftmaxRows {
                        probs,
                        scores,
                        mask,
                        seq,
                        first_row: task * ROWS_PER_TASK,
                        rows_per_sequence: heads * rows,
                        scale,
                    })
                });
        }
        let probs = from_vec(probs, Shape::new([batch, heads, rows, seq]));
        (probs.clone(), probs)
    });
    from_ad(out)
}

#[derive(Debug)]
struct MaskedSoftmax {
    scale: f32,
}

impl Backward<Flex, 1> for MaskedSoftmax {
    /// The probabilities.
    type State = FlexTensor;

    fn backward(self, ops: Ops<FlexTensor, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let probs = ops.state;
        let scale = self.scale;
        unary::<Flex, _>(ops.parents, ops.node, grads, |grad| {
            let shape = probs.layout().shape().clone();
            let seq = shape[shape.num_dims() - 1];
            let grad = grad.to_contiguous();
            let (p, g) = (slice(&probs), slice(&grad));
            let mut out = vec![0f32; p.len()];
            if seq > 0 {
                out.par_chunks_mut(ROWS_PER_TASK * seq)
                    .zip(p.par_chunks(ROWS_PER_TASK * seq))
                    .zip(g.par_chunks(ROWS_PER_TASK * seq))
                    .for_each(|((out, p), g)| {
                        vectorized(SoftmaxBackwardRows {
                            out,
                            p,
                            g,
                            seq,
                            scale,
                        })
                    });
            }
            from_vec(out, shape)
        });
    }
}

/// `[batch_size, seq_length, heads · head_dim]` → contiguous `[batch_size, heads, seq_length,
/// head_dim]` (`reshape` + `swap_dims(1, 2)`, copied in parallel once, instead of by each
/// matmul that reads the strided view and again for the gradient). Backward:
/// [`merge_heads`]. Call only where [`active`] holds.
pub(crate) fn split_heads<B: Backend>(x: Tensor<B, 3>, heads: usize) -> Tensor<B, 4> {
    let [batch, seq, width] = x.dims();
    assert_eq!(
        width % heads,
        0,
        "width {width} is not a multiple of {heads} heads"
    );
    let out = record(PermuteHeads { split: true }, to_ad(x), |x| {
        let dims = [batch, heads, seq, width / heads];
        (permute_heads(slice(&x), dims, true), dims)
    });
    from_ad(out)
}

/// `[batch_size, heads, seq_length, head_dim]` → contiguous `[batch_size, seq_length,
/// heads · head_dim]`, the inverse of [`split_heads`] (its backward). Call only where
/// [`active`] holds.
pub(crate) fn merge_heads<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 3> {
    let dims = x.dims();
    let out = record(PermuteHeads { split: false }, to_ad(x), |x| {
        (permute_heads(slice(&x), dims, false), dims)
    });
    from_ad(out)
}

/// Copies between `[b, t, h, d]` and `[b, h, t, d]` (`dims` = `[b, h, t, d]`): `split` reads
/// the first layout and writes the second, else the reverse. Parallel over output blocks.
fn permute_heads(x: &[f32], [batch, heads, seq, head_dim]: [usize; 4], split: bool) -> FlexTensor {
    let width = heads * head_dim;
    let mut out = vec![0f32; x.len()];
    if head_dim > 0 && seq > 0 {
        if split {
            // Output block (b, h): [seq, head_dim], row t from x[b, t, h·d..].
            out.par_chunks_mut(seq * head_dim)
                .enumerate()
                .for_each(|(bh, block)| {
                    let (b, h) = (bh / heads, bh % heads);
                    for (t, row) in block.chunks_exact_mut(head_dim).enumerate() {
                        let src = (b * seq + t) * width + h * head_dim;
                        row.copy_from_slice(&x[src..src + head_dim]);
                    }
                });
        } else {
            // Output row (b, t): [width], head h from x[b, h, t, ..].
            out.par_chunks_mut(width).enumerate().for_each(|(bt, row)| {
                let (b, t) = (bt / seq, bt % seq);
                for (h, dst) in row.chunks_exact_mut(head_dim).enumerate() {
                    let src = ((b * heads + h) * seq + t) * head_dim;
                    dst.copy_from_slice(&x[src..src + head_dim]);
                }
            });
        }
    }
    let shape = if split {
        Shape::new([batch, heads, seq, head_dim])
    } else {
        Shape::new([batch, seq, width])
    };
    from_vec(out, shape)
}

/// [`split_heads`] (`split`) or [`merge_heads`]; the backward permutes the other way.
#[derive(Debug)]
struct PermuteHeads {
    split: bool,
}

impl Backward<Flex, 1> for PermuteHeads {
    /// The split layout's dimensions `[b, h, t, d]`.
    type State = [usize; 4];

    fn backward(self, ops: Ops<[usize; 4], 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dims = ops.state;
        unary::<Flex, _>(ops.parents, ops.node, grads, |grad| {
            permute_heads(slice(&grad.to_contiguous()), dims, !self.split)
        });
    }
}

/// LayerNorm over the last dimension: `(x − mean) / √(var + epsilon) · gamma + beta`, `x` of
/// any rank `[..., width]`, `gamma` and `beta` `[width]`. Backward, per row with
/// `ĝ = dy ⊙ gamma`: `dx = (ĝ − mean(ĝ) − x̂ mean(ĝ ⊙ x̂)) / √(var + epsilon)`; over rows:
/// `dgamma = Σ dy ⊙ x̂`, `dbeta = Σ dy`. Call only where [`active`] holds.
pub(crate) fn layer_norm<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    gamma: Tensor<B, 1>,
    beta: Option<Tensor<B, 1>>,
    epsilon: f64,
) -> Tensor<B, D> {
    let [width] = gamma.dims();
    assert_eq!(x.dims()[D - 1], width, "LayerNorm width");
    let beta = beta.unwrap_or_else(|| gamma.zeros_like());
    let x = to_ad(x).into_primitive().tensor();
    let gamma = to_ad(gamma).into_primitive().tensor();
    let beta = to_ad(beta).into_primitive().tensor();
    let shape = x.primitive.layout().shape().clone();
    let (xs, gs, bs) = (
        x.primitive.to_contiguous(),
        gamma.primitive.to_contiguous(),
        beta.primitive.to_contiguous(),
    );
    let n = shape.num_elements();
    let rows = n.checked_div(width).unwrap_or(0);
    let (mut y, mut xhat, mut rstd) = (vec![0f32; n], vec![0f32; n], vec![0f32; rows]);
    if width > 0 {
        let chunk = ROWS_PER_TASK * width;
        y.par_chunks_mut(chunk)
            .zip(xhat.par_chunks_mut(chunk))
            .zip(rstd.par_chunks_mut(ROWS_PER_TASK))
            .zip(slice(&xs).par_chunks(chunk))
            .for_each(|(((y, xhat), rstd), x)| {
                vectorized(LayerNormRows {
                    y,
                    xhat,
                    rstd,
                    x,
                    gamma: slice(&gs),
                    beta: slice(&bs),
                    epsilon: epsilon as f32,
                })
            });
    }
    let y = from_vec(y, shape.clone());
    let nodes = [x.node.clone(), gamma.node.clone(), beta.node.clone()];
    let out = match LayerNormOp
        .prepare::<NoCheckpointing>(nodes)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let state = LayerNormState {
                xhat: from_vec(xhat, shape),
                rstd,
                gamma: gs,
            };
            prep.finish(state, y)
        }
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    from_ad(Tensor::from_primitive(TensorPrimitive::Float(out)))
}

#[derive(Debug)]
struct LayerNormOp;

#[derive(Debug, Clone)]
struct LayerNormState {
    /// The normalised input `(x − mean) / √(var + epsilon)`.
    xhat: FlexTensor,
    /// `1 / √(var + epsilon)` per row.
    rstd: Vec<f32>,
    gamma: FlexTensor,
}

impl Backward<Flex, 3> for LayerNormOp {
    type State = LayerNormState;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [x_node, gamma_node, beta_node] = ops.parents;
        let LayerNormState { xhat, rstd, gamma } = ops.state;
        let grad = grads.consume::<Flex>(&ops.node).to_contiguous();
        let (g, xh, gm) = (slice(&grad), slice(&xhat), slice(&gamma));
        let width = gm.len();
        if width == 0 {
            return;
        }
        let chunk = ROWS_PER_TASK * width;
        if let Some(node) = x_node {
            let mut dx = vec![0f32; g.len()];
            dx.par_chunks_mut(chunk)
                .zip(g.par_chunks(chunk))
                .zip(xh.par_chunks(chunk))
                .zip(rstd.par_chunks(ROWS_PER_TASK))
                .for_each(|(((dx, g), xhat), rstd)| {
                    vectorized(LayerNormBackwardRows {
                        dx,
                        g,
                        xhat,
                        rstd,
                        gamma: gm,
                    })
                });
            grads.register::<Flex>(node.id, from_vec(dx, xhat.layout().shape().clone()));
        }
        if gamma_node.is_some() || beta_node.is_some() {
            // Per task: [Σ dy ⊙ x̂ | Σ dy] over its rows, then the tasks' sums in order.
            let sums = g
                .par_chunks(chunk)
                .zip(xh.par_chunks(chunk))
                .map(|(g, xhat)| {
                    let mut sums = vec![0f32; 2 * width];
                    vectorized(ColumnSums {
                        sums: &mut sums,
                        g,
                        xhat,
                    });
                    sums
                })
                .collect::<Vec<_>>();
            let mut total = vec![0f32; 2 * width];
            for s in &sums {
                total.iter_mut().zip(s).for_each(|(t, s)| *t += s);
            }
            let dbeta = total.split_off(width);
            if let Some(node) = gamma_node {
                grads.register::<Flex>(node.id, from_vec(total, Shape::new([width])));
            }
            if let Some(node) = beta_node {
                grads.register::<Flex>(node.id, from_vec(dbeta, Shape::new([width])));
            }
        }
    }
}

/// Mean cross-entropy of `logits` `[n, classes]` against `targets` `[n]` (class ids), as a
/// `[1]` tensor: `mean_r(logsumexp(logits_r) − logits_r[target_r])`. Only the logits are
/// differentiated: `dlogits = dloss / n · (softmax(logits) − onehot(target))`. Panics on a
/// target outside `0..classes` (as Burn's gather). Call only where [`active`] holds.
pub(crate) fn cross_entropy<B: Backend>(
    logits: Tensor<B, 2>,
    targets: Tensor<B, 1, Int>,
) -> Tensor<B, 1> {
    let [n, classes] = logits.dims();
    let targets: Vec<usize> = to_ad(targets)
        .into_data()
        .iter::<i64>()
        .map(|t| {
            assert!(
                (0..classes as i64).contains(&t),
                "cross-entropy target {t} outside 0..{classes}"
            );
            t as usize
        })
        .collect();
    assert_eq!(targets.len(), n, "one target per row");
    let out = record(CrossEntropy, to_ad(logits), |logits| {
        let x = slice(&logits);
        // Per row: log Σ exp, and the row's loss.
        let mut lse = vec![0f32; n];
        let mut losses = vec![0f32; n];
        if classes > 0 {
            lse.par_iter_mut()
                .zip(losses.par_iter_mut())
                .zip(x.par_chunks(classes))
                .zip(targets.par_iter())
                .for_each(|(((lse, loss), row), &t)| {
                    vectorized(CrossEntropyRow {
                        lse,
                        loss,
                        row,
                        target: t,
                    })
                });
        }
        // The mean in f64, then f32 (Burn's mean sums in f32; this is as close or closer).
        let mean = losses.iter().map(|&l| f64::from(l)).sum::<f64>() / n.max(1) as f64;
        let state = CrossEntropyState {
            logits,
            lse,
            targets,
        };
        (from_vec(vec![mean as f32], Shape::new([1])), state)
    });
    from_ad(out)
}

#[derive(Debug)]
struct CrossEntropy;

#[derive(Debug, Clone)]
struct CrossEntropyState {
    logits: FlexTensor,
    lse: Vec<f32>,
    targets: Vec<usize>,
}

impl Backward<Flex, 1> for CrossEntropy {
    type State = CrossEntropyState;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let CrossEntropyState {
            logits,
            lse,
            targets,
        } = ops.state;
        unary::<Flex, _>(ops.parents, ops.node, grads, |grad| {
            let shape = logits.layout().shape().clone();
            let classes = shape[1];
            let n = lse.len();
            let g = grad.into_data().iter::<f32>().next().unwrap_or(0.0) / n.max(1) as f32;
            let x = slice(&logits);
            let mut out = vec![0f32; x.len()];
            if classes > 0 {
                out.par_chunks_mut(classes)
                    .zip(x.par_chunks(classes))
                    .zip(lse.par_iter().zip(targets.par_iter()))
                    .for_each(|((out, row), (&lse, &target))| {
                        vectorized(CrossEntropyBackwardRow {
                            out,
                            row,
                            lse,
                            target,
                            g,
                        })
                    });
            }
            from_vec(out, shape)
        });
    }
}

/// Exact GELU, `x Φ(x)`, elementwise on any shape. Backward: `dx = dy · (Φ(x) + x φ(x))`.
/// Call only where [`active`] holds.
pub(crate) fn gelu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let out = record(Gelu, to_ad(x), |x| {
        let shape = x.layout().shape().clone();
        let mut y = slice(&x).to_vec();
        y.par_chunks_mut(ELEMENTS_PER_TASK)
            .for_each(|y| vectorized(GeluChunk { y }));
        (from_vec(y, shape), x)
    });
    from_ad(out)
}

#[derive(Debug)]
struct Gelu;

impl Backward<Flex, 1> for Gelu {
    /// The input.
    type State = FlexTensor;

    fn backward(self, ops: Ops<FlexTensor, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let x = ops.state;
        unary::<Flex, _>(ops.parents, ops.node, grads, |grad| {
            let shape = x.layout().shape().clone();
            let grad = grad.to_contiguous();
            let mut out = slice(&grad).to_vec();
            out.par_chunks_mut(ELEMENTS_PER_TASK)
                .zip(slice(&x).par_chunks(ELEMENTS_PER_TASK))
                .for_each(|(g, x)| vectorized(GeluBackwardChunk { g, x }));
            from_vec(out, shape)
        });
    }
}

/// `d/dx [x Φ(x)] = Φ(x) + x φ(x)`, with `Φ` from [`gelu_f32`]'s `erf` (`Φ(x) = gelu(x) / x`
/// is not usable at 0, so it is recomputed here the same way).
#[inline(always)]
fn gelu_derivative_f32(x: f32) -> f32 {
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    let pdf = INV_SQRT_2PI * exp_f32(-0.5 * x * x);
    super::normal_cdf_f32(x) + x * pdf
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

/// `Σ a[i] b[i]` over 8 interleaved accumulators (see [`lanes`]).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let rest: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for ((acc, x), y) in acc.iter_mut().zip(x).zip(y) {
            *acc += x * y;
        }
    }
    acc.iter().fold(rest, |s, a| s + a)
}

/// Softmax rows `first_row..` of `probs` (`[rows, seq]`) from `scores · scale + mask[b]`,
/// `b` the row's sequence.
struct SoftmaxRows<'a> {
    probs: &'a mut [f32],
    scores: &'a [f32],
    mask: &'a [f32],
    seq: usize,
    first_row: usize,
    rows_per_sequence: usize,
    scale: f32,
}

impl Kernel for SoftmaxRows<'_> {
    #[inline(always)]
    fn run(self) {
        let seq = self.seq;
        for (r, (p, s)) in self
            .probs
            .chunks_exact_mut(seq)
            .zip(self.scores.chunks_exact(seq))
            .enumerate()
        {
            let b = (self.first_row + r) / self.rows_per_sequence;
            let mask = &self.mask[b * seq..(b + 1) * seq];
            for ((p, s), m) in p.iter_mut().zip(s).zip(mask) {
                *p = s * self.scale + m;
            }
            let max = lanes(p, f32::NEG_INFINITY, f32::max);
            for p in p.iter_mut() {
                *p = exp_f32(*p - max);
            }
            let inv = 1.0 / lanes(p, 0.0, |a, b| a + b);
            for p in p.iter_mut() {
                *p *= inv;
            }
        }
    }
}

/// `out = scale · p ⊙ (g − Σⱼ gⱼ pⱼ)`, row by row.
struct SoftmaxBackwardRows<'a> {
    out: &'a mut [f32],
    p: &'a [f32],
    g: &'a [f32],
    seq: usize,
    scale: f32,
}

impl Kernel for SoftmaxBackwardRows<'_> {
    #[inline(always)]
    fn run(self) {
        let seq = self.seq;
        for ((o, p), g) in self
            .out
            .chunks_exact_mut(seq)
            .zip(self.p.chunks_exact(seq))
            .zip(self.g.chunks_exact(seq))
        {
            let dot = dot(p, g);
            for ((o, p), g) in o.iter_mut().zip(p).zip(g) {
                *o = self.scale * p * (g - dot);
            }
        }
    }
}

/// One row's `log Σ exp` and loss `lse − row[target]`.
struct CrossEntropyRow<'a> {
    lse: &'a mut f32,
    loss: &'a mut f32,
    row: &'a [f32],
    target: usize,
}

impl Kernel for CrossEntropyRow<'_> {
    #[inline(always)]
    fn run(self) {
        let max = lanes(self.row, f32::NEG_INFINITY, f32::max);
        let sum = fold_lanes(self.row, 0.0, |v| exp_f32(v - max), |a, b| a + b);
        *self.lse = max + sum.ln();
        *self.loss = *self.lse - self.row[self.target];
    }
}

/// `out = g · (softmax(row) − onehot(target))`.
struct CrossEntropyBackwardRow<'a> {
    out: &'a mut [f32],
    row: &'a [f32],
    lse: f32,
    target: usize,
    g: f32,
}

impl Kernel for CrossEntropyBackwardRow<'_> {
    #[inline(always)]
    fn run(self) {
        for (o, &v) in self.out.iter_mut().zip(self.row) {
            *o = self.g * exp_f32(v - self.lse);
        }
        self.out[self.target] -= self.g;
    }
}

/// `y = gelu(y)`.
struct GeluChunk<'a> {
    y: &'a mut [f32],
}

impl Kernel for GeluChunk<'_> {
    #[inline(always)]
    fn run(self) {
        for v in self.y.iter_mut() {
            *v = gelu_f32(*v);
        }
    }
}

/// `g = g · gelu'(x)`.
struct GeluBackwardChunk<'a> {
    g: &'a mut [f32],
    x: &'a [f32],
}

impl Kernel for GeluBackwardChunk<'_> {
    #[inline(always)]
    fn run(self) {
        for (g, &x) in self.g.iter_mut().zip(self.x) {
            *g *= gelu_derivative_f32(x);
        }
    }
}

/// LayerNorm forward on whole rows: `y`, `xhat` (normalised input), `rstd` per row.
struct LayerNormRows<'a> {
    y: &'a mut [f32],
    xhat: &'a mut [f32],
    rstd: &'a mut [f32],
    x: &'a [f32],
    gamma: &'a [f32],
    beta: &'a [f32],
    epsilon: f32,
}

impl Kernel for LayerNormRows<'_> {
    #[inline(always)]
    fn run(self) {
        let width = self.gamma.len();
        let inv_width = 1.0 / width as f32;
        for (((y, xhat), rstd), x) in self
            .y
            .chunks_exact_mut(width)
            .zip(self.xhat.chunks_exact_mut(width))
            .zip(self.rstd.iter_mut())
            .zip(self.x.chunks_exact(width))
        {
            let mean = lanes(x, 0.0, |a, b| a + b) * inv_width;
            let var = fold_lanes(x, 0.0, |v| (v - mean) * (v - mean), |a, b| a + b) * inv_width;
            *rstd = 1.0 / (var + self.epsilon).sqrt();
            for ((((y, xh), &v), g), b) in y
                .iter_mut()
                .zip(xhat.iter_mut())
                .zip(x)
                .zip(self.gamma)
                .zip(self.beta)
            {
                *xh = (v - mean) * *rstd;
                *y = *xh * g + b;
            }
        }
    }
}

/// `dx` of LayerNorm, row by row (see [`layer_norm`]).
struct LayerNormBackwardRows<'a> {
    dx: &'a mut [f32],
    g: &'a [f32],
    xhat: &'a [f32],
    rstd: &'a [f32],
    gamma: &'a [f32],
}

impl Kernel for LayerNormBackwardRows<'_> {
    #[inline(always)]
    fn run(self) {
        let width = self.gamma.len();
        let inv_width = 1.0 / width as f32;
        for (((dx, g), xhat), &rstd) in self
            .dx
            .chunks_exact_mut(width)
            .zip(self.g.chunks_exact(width))
            .zip(self.xhat.chunks_exact(width))
            .zip(self.rstd)
        {
            // ĝ = g ⊙ gamma, written into dx first.
            for ((d, g), gm) in dx.iter_mut().zip(g).zip(self.gamma) {
                *d = g * gm;
            }
            let mean_g = lanes(dx, 0.0, |a, b| a + b) * inv_width;
            let mean_gx = dot(dx, xhat) * inv_width;
            for (d, xh) in dx.iter_mut().zip(xhat) {
                *d = (*d - mean_g - xh * mean_gx) * rstd;
            }
        }
    }
}

/// `sums[..w] += Σ_rows g ⊙ xhat`, `sums[w..] += Σ_rows g`.
struct ColumnSums<'a> {
    sums: &'a mut [f32],
    g: &'a [f32],
    xhat: &'a [f32],
}

impl Kernel for ColumnSums<'_> {
    #[inline(always)]
    fn run(self) {
        let width = self.sums.len() / 2;
        let (dgamma, dbeta) = self.sums.split_at_mut(width);
        for (g, xhat) in self
            .g
            .chunks_exact(width)
            .zip(self.xhat.chunks_exact(width))
        {
            for (((dg, db), g), xh) in dgamma.iter_mut().zip(dbeta.iter_mut()).zip(g).zip(xhat) {
                *dg += g * xh;
                *db += g;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::activation::{gelu as burn_gelu, log_softmax, softmax};
    use burn::tensor::ops::ModuleOps;
    use burn::tensor::{Distribution, TensorData};

    fn max_abs_diff(a: Tensor<Flex, 1>, b: Tensor<Flex, 1>) -> f32 {
        (a - b).abs().max().into_scalar()
    }

    fn flat<const D: usize>(t: Tensor<Flex, D>) -> Tensor<Flex, 1> {
        let n = t.shape().num_elements();
        t.reshape([n])
    }

    /// Value and gradient of `f` (fused) and `g` (Burn's ops) at `x`, weighted by `w` so that
    /// every output element carries a different gradient.
    fn compare<const D: usize, const R: usize>(
        x: Tensor<Ad, D>,
        w: Tensor<Ad, R>,
        fused: impl Fn(Tensor<Ad, D>) -> Tensor<Ad, R>,
        reference: impl Fn(Tensor<Ad, D>) -> Tensor<Ad, R>,
    ) -> (f32, f32) {
        let run = |f: &dyn Fn(Tensor<Ad, D>) -> Tensor<Ad, R>| {
            let x = x.clone().detach().require_grad();
            let y = f(x.clone());
            let grads = (y.clone() * w.clone()).sum().backward();
            (y.inner(), x.grad(&grads).expect("gradient"))
        };
        let (y1, g1) = run(&fused);
        let (y2, g2) = run(&reference);
        (
            max_abs_diff(flat(y1), flat(y2)),
            max_abs_diff(flat(g1), flat(g2)),
        )
    }

    #[test]
    fn masked_softmax_matches_burn_ops() {
        let device = Default::default();
        Ad::seed(&device, 11);
        let (batch, heads, seq) = (3, 2, 37);
        let scores = Tensor::<Ad, 4>::random(
            [batch, heads, seq, seq],
            Distribution::Normal(0.0, 3.0),
            &device,
        );
        // Sequence b has 37 - 5b real tokens.
        let mask: Vec<f32> = (0..batch)
            .flat_map(|b| (0..seq).map(move |j| if j < seq - 5 * b { 0.0 } else { -10_000.0 }))
            .collect();
        let mask = Tensor::<Ad, 4>::from_data(TensorData::new(mask, [batch, 1, 1, seq]), &device);
        let w = Tensor::<Ad, 4>::random(
            [batch, heads, seq, seq],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        let scale = 0.125;
        let (dy, dg) = compare(
            scores,
            w,
            |s| masked_softmax(s, mask.clone(), scale),
            |s| softmax(s * scale + mask.clone(), 3),
        );
        assert!(dy < 1e-6, "probabilities differ by {dy}");
        assert!(dg < 1e-6, "gradients differ by {dg}");
    }

    #[test]
    fn cross_entropy_matches_burn_ops() {
        let device = Default::default();
        Ad::seed(&device, 12);
        let (n, classes) = (29, 1_001);
        let logits = Tensor::<Ad, 2>::random([n, classes], Distribution::Normal(0.0, 4.0), &device);
        let targets: Vec<i64> = (0..n as i64).map(|r| (r * 347) % classes as i64).collect();
        let targets = Tensor::<Ad, 1, Int>::from_data(TensorData::new(targets, [n]), &device);
        let w = Tensor::<Ad, 1>::from_data([1.7f32], &device);
        let (dy, dg) = compare(
            logits,
            w,
            |x| cross_entropy(x, targets.clone()),
            |x| {
                log_softmax(x, 1)
                    .gather(1, targets.clone().reshape([n, 1]))
                    .mean()
                    .neg()
            },
        );
        assert!(dy < 1e-5, "losses differ by {dy}");
        assert!(dg < 5e-7, "gradients differ by {dg}");
    }

    #[test]
    fn gelu_matches_burn_ops() {
        let device = Default::default();
        Ad::seed(&device, 13);
        let x = Tensor::<Ad, 3>::random([4, 33, 65], Distribution::Normal(0.0, 3.0), &device);
        let w = Tensor::<Ad, 3>::random([4, 33, 65], Distribution::Normal(0.0, 1.0), &device);
        let (dy, dg) = compare(x, w, gelu, burn_gelu);
        assert!(dy < 1e-5, "values differ by {dy}");
        assert!(dg < 1e-5, "gradients differ by {dg}");
    }

    #[test]
    fn split_and_merge_heads_match_burn_ops() {
        let device = Default::default();
        Ad::seed(&device, 14);
        let (batch, seq, heads, head_dim) = (3, 7, 4, 5);
        let x = Tensor::<Ad, 3>::random(
            [batch, seq, heads * head_dim],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        let w = Tensor::<Ad, 4>::random(
            [batch, heads, seq, head_dim],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        let split = |x: Tensor<Ad, 3>| x.reshape([batch, seq, heads, head_dim]).swap_dims(1, 2);
        let (dy, dg) = compare(x.clone(), w, |x| split_heads(x, heads), split);
        assert_eq!((dy, dg), (0.0, 0.0));
        // merge ∘ split is the identity, and its gradient passes through unchanged.
        let w = Tensor::<Ad, 3>::random(
            [batch, seq, heads * head_dim],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        let (dy, dg) = compare(x, w, |x| merge_heads(split_heads(x, heads)), |x| x * 1.0);
        assert_eq!((dy, dg), (0.0, 0.0));
    }

    #[test]
    fn layer_norm_matches_burn_ops() {
        let device = Default::default();
        Ad::seed(&device, 15);
        let width = 67;
        let x = Tensor::<Ad, 3>::random([5, 13, width], Distribution::Normal(0.5, 2.0), &device);
        let w = Tensor::<Ad, 3>::random([5, 13, width], Distribution::Normal(0.0, 1.0), &device);
        let gamma = Tensor::<Ad, 1>::random([width], Distribution::Normal(1.0, 0.3), &device)
            .require_grad();
        let beta = Tensor::<Ad, 1>::random([width], Distribution::Normal(0.0, 0.3), &device)
            .require_grad();
        let reference = |x: Tensor<Ad, 3>, gamma: Tensor<Ad, 1>, beta: Tensor<Ad, 1>| {
            Tensor::from_primitive(TensorPrimitive::Float(Ad::layer_norm(
                x.into_primitive().tensor(),
                gamma.into_primitive().tensor(),
                Some(beta.into_primitive().tensor()),
                1e-12,
            )))
        };
        // x's value and gradient.
        let (dy, dg) = compare(
            x.clone(),
            w.clone(),
            |x| layer_norm(x, gamma.clone(), Some(beta.clone()), 1e-12),
            |x| reference(x, gamma.clone(), beta.clone()),
        );
        assert!(dy < 1e-5, "values differ by {dy}");
        assert!(dg < 1e-5, "input gradients differ by {dg}");
        // gamma's and beta's gradients.
        let params = |fused: bool| {
            let (gamma, beta) = (
                gamma.clone().detach().require_grad(),
                beta.clone().detach().require_grad(),
            );
            let y = if fused {
                layer_norm(x.clone(), gamma.clone(), Some(beta.clone()), 1e-12)
            } else {
                reference(x.clone(), gamma.clone(), beta.clone())
            };
            let grads = (y * w.clone()).sum().backward();
            let g = |t: &Tensor<Ad, 1>| t.grad(&grads).expect("gradient");
            (g(&gamma), g(&beta))
        };
        let ((g1, b1), (g2, b2)) = (params(true), params(false));
        assert!(max_abs_diff(g1, g2) < 1e-4, "gamma gradients differ");
        assert!(max_abs_diff(b1, b2) < 1e-4, "beta gradients differ");
    }

    #[test]
    fn untracked_inputs_record_nothing() {
        let device = Default::default();
        let x = Tensor::<Ad, 2>::ones([2, 3], &device);
        let y = gelu(x);
        assert!(!y.is_require_grad());
    }
}
