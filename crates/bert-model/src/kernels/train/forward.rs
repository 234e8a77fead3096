//! The training ops' forward passes: each computes its result on the inner flex tensors and
//! records its backward step (module `backward`) with the state that step needs.

use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::ops::{Backward, OpsKind};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Shape, Tensor, TensorPrimitive};
use burn_flex::FlexTensor;
use rayon::prelude::*;

use super::backward::{
    CrossEntropy, CrossEntropyState, DenseOp, DenseState, Gelu, LayerNormOp, LayerNormState,
    MaskedSoftmax, PermuteHeads,
};
use super::{ELEMENTS_PER_TASK, Kernel, ROWS_PER_TASK, from_ad, record, to_ad, vectorized};
use crate::kernels::gemm::{self, View, ViewMut, bias_rows};
use crate::kernels::simd::{exp_f32, fold_lanes, gelu_f32, lanes};
use crate::kernels::{from_vec, slice};

/// Attention probabilities `softmax(scores · scale + mask_bias)` over the last dimension:
/// - `scores`: `[batch_size, heads, seq_length, seq_length]` (`q kᵀ`)
/// - `mask_bias`: `[batch_size, 1, 1, seq_length]`, not differentiated
/// - returns the probabilities, shaped as `scores`
///
/// Backward: `dscores = scale · p ⊙ (dp − Σⱼ dpⱼ pⱼ)`. Call only on `Autodiff<Flex>` f32 tensors.
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

/// `[batch_size, seq_length, heads · head_dim]` → contiguous `[batch_size, heads, seq_length,
/// head_dim]` (`reshape` + `swap_dims(1, 2)`, copied in parallel once, instead of by each
/// matmul that reads the strided view and again for the gradient). Backward:
/// [`merge_heads`]. Call only on `Autodiff<Flex>` f32 tensors.
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
/// heads · head_dim]`, the inverse of [`split_heads`] (its backward). Call only on
/// `Autodiff<Flex>` f32 tensors.
pub(crate) fn merge_heads<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 3> {
    let dims = x.dims();
    let out = record(PermuteHeads { split: false }, to_ad(x), |x| {
        (permute_heads(slice(&x), dims, false), dims)
    });
    from_ad(out)
}

/// Copies between `[b, t, h, d]` and `[b, h, t, d]` (`dims` = `[b, h, t, d]`): `split` reads
/// the first layout and writes the second, else the reverse. Parallel over output blocks.
pub(super) fn permute_heads(
    x: &[f32],
    [batch, heads, seq, head_dim]: [usize; 4],
    split: bool,
) -> FlexTensor {
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

/// LayerNorm over the last dimension: `(x − mean) / √(var + epsilon) · gamma + beta`, `x` of
/// any rank `[..., width]`, `gamma` and `beta` `[width]`. Backward, per row with
/// `ĝ = dy ⊙ gamma`: `dx = (ĝ − mean(ĝ) − x̂ mean(ĝ ⊙ x̂)) / √(var + epsilon)`; over rows:
/// `dgamma = Σ dy ⊙ x̂`, `dbeta = Σ dy`. Call only on `Autodiff<Flex>` f32 tensors.
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

/// Mean cross-entropy of `logits` `[n, classes]` against `targets` `[n]` (class ids), as a
/// `[1]` tensor: `mean_r(logsumexp(logits_r) − logits_r[target_r])`. Only the logits are
/// differentiated: `dlogits = dloss / n · (softmax(logits) − onehot(target))`. Panics on a
/// target outside `0..classes` (as Burn's gather). Call only on `Autodiff<Flex>` f32 tensors.
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

/// Exact GELU, `x Φ(x)`, elementwise on any shape. Backward: `dx = dy · (Φ(x) + x φ(x))`.
/// Call only on `Autodiff<Flex>` f32 tensors.
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

/// `x · W + b` (a `Linear` with a bias): `x` `[batch_size, seq_length, d_in]` →
/// `[batch_size, seq_length, d_out]`. Forward and backward are GEMMs on buffers of their own
/// (the forward accumulates onto the bias), without the copies flex's matmul makes around its
/// output.
pub(crate) fn dense<B: Backend>(
    weight: Tensor<B, 2>,
    bias: Tensor<B, 1>,
    x: Tensor<B, 3>,
) -> Tensor<B, 3> {
    let [batch, seq, d_in] = x.dims();
    let x = to_ad(x).into_primitive().tensor();
    let weight = to_ad(weight).into_primitive().tensor();
    let bias = to_ad(bias).into_primitive().tensor();
    let xs = x.primitive.to_contiguous();
    let ws = weight.primitive.clone();
    let w = View::of(&ws).expect("a dense layer's weight is a 2-D f32 tensor (see crate::ops)");
    let d_out = w.cols();
    let bs = bias.primitive.to_contiguous();
    let rows = batch * seq;
    let mut y = bias_rows(slice(&bs), rows);
    gemm::product(
        View::rows(slice(&xs), d_in),
        w,
        ViewMut::rows(&mut y, d_out),
        1.0,
        true,
    );
    let y = from_vec(y, Shape::new([batch, seq, d_out]));
    let nodes = [x.node.clone(), weight.node.clone(), bias.node.clone()];
    let out = match DenseOp
        .prepare::<NoCheckpointing>(nodes)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(DenseState { x: xs, weight: ws }, y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    from_ad(Tensor::from_primitive(TensorPrimitive::Float(out)))
}
