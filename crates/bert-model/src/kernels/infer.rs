//! The inference kernels, forward only, on tensors of flex itself. A tensor of a generic
//! backend `B` is a flex tensor when `B::FloatTensorPrimitive` is `FlexTensor`; it is then moved
//! out of (and back into) its `Tensor` through `Any`, without copying.

use burn::nn::Linear;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorPrimitive};
use burn_flex::FlexTensor;
use pulp::{Arch, Simd, WithSimd};
use rayon::prelude::*;

use super::simd::{exp_f32, gelu_f32, lanes};
use super::{from_vec, retype, slice};
use crate::layer_norm::LayerNorm;

/// Rows handed to one rayon task by the row-wise kernels (a few KB to a few hundred KB).
const ROWS_PER_TASK: usize = 16;

fn into_flex<B: Backend, const D: usize>(x: Tensor<B, D>) -> FlexTensor {
    match x.into_primitive() {
        TensorPrimitive::Float(t) => retype(t, "fused kernels take flex tensors (see crate::ops)"),
        TensorPrimitive::QFloat(_) => panic!("fused kernels take float tensors (see crate::ops)"),
    }
}

fn from_flex<B: Backend, const D: usize>(t: FlexTensor) -> Tensor<B, D> {
    let primitive = retype(t, "fused kernels return flex tensors (see crate::ops)");
    Tensor::from_primitive(TensorPrimitive::Float(primitive))
}

/// The elements of `x`, in row-major order, owned (no copy when `x` holds its buffer alone).
fn owned<B: Backend, const D: usize>(x: Tensor<B, D>) -> Vec<f32> {
    into_flex(x)
        .into_data()
        .into_vec::<f32>()
        .expect("fused kernels take f32 tensors (see crate::ops)")
}

/// A read-only contiguous f32 view of `x` (copied only when `x` is a strided view).
fn contiguous<B: Backend, const D: usize>(x: Tensor<B, D>) -> FlexTensor {
    into_flex(x).to_contiguous()
}

fn tensor<B: Backend, const D: usize>(data: Vec<f32>, dims: [usize; D]) -> Tensor<B, D> {
    from_flex(from_vec(data, dims))
}

/// `x @ weight` as `[rows, d_out]` (no bias), rows = every position of `x`.
fn matmul<B: Backend>(dense: &Linear<B>, x: Tensor<B, 3>) -> (Vec<f32>, [usize; 3]) {
    let [batch, seq, d_in] = x.dims();
    let y = x.reshape([batch * seq, d_in]).matmul(dense.weight.val());
    let d_out = y.dims()[1];
    (owned(y), [batch, seq, d_out])
}

fn bias<B: Backend>(dense: &Linear<B>, width: usize) -> FlexTensor {
    match &dense.bias {
        Some(b) => contiguous(b.val()),
        None => from_vec(vec![0f32; width], [width]),
    }
}

/// `activation(dense(x))` with exact GELU: `[batch_size, seq_length, d_in]` →
/// `[batch_size, seq_length, d_out]`. Call only where `crate::ops` finds a flex f32 tensor.
pub(crate) fn dense_gelu<B: Backend>(dense: &Linear<B>, x: Tensor<B, 3>) -> Tensor<B, 3> {
    let (mut y, dims) = matmul(dense, x);
    let width = dims[2];
    let bias = bias(dense, width);
    let bias = slice(&bias);
    y.par_chunks_mut(ROWS_PER_TASK * width)
        .for_each(|rows| Arch::new().dispatch(BiasGelu { rows, bias }));
    tensor(y, dims)
}

/// `LayerNorm(dense(x) + residual)`: `x` `[batch_size, seq_length, d_in]`, `residual` and
/// the result `[batch_size, seq_length, H]`. Call only where `crate::ops` finds a
/// flex f32 tensor.
pub(crate) fn dense_add_layer_norm<B: Backend>(
    dense: &Linear<B>,
    x: Tensor<B, 3>,
    residual: Tensor<B, 3>,
    layer_norm: &LayerNorm<B>,
) -> Tensor<B, 3> {
    let (mut y, dims) = matmul(dense, x);
    let width = dims[2];
    let bias = bias(dense, width);
    let residual = contiguous(residual);
    let (bias, residual) = (slice(&bias), slice(&residual));
    y.par_chunks_mut(ROWS_PER_TASK * width)
        .zip(residual.par_chunks(ROWS_PER_TASK * width))
        .for_each(|(rows, residual)| {
            Arch::new().dispatch(BiasResidual {
                rows,
                bias,
                residual,
            })
        });
    // flex's own LayerNorm is already one fused, row-parallel pass.
    layer_norm.forward(tensor(y, dims))
}

/// Multi-head self-attention context (HF `BertSelfAttention` at inference):
/// - `hidden`: `[batch_size, seq_length, H]`
/// - `mask_bias`: `[batch_size, 1, 1, seq_length]` (see [`crate::attention_mask_bias`])
/// - returns `[batch_size, seq_length, H]`
///
/// Call only where `crate::ops` finds a flex f32 tensor.
pub(crate) fn self_attention<B: Backend>(
    query: &Linear<B>,
    key: &Linear<B>,
    value: &Linear<B>,
    num_heads: usize,
    hidden: Tensor<B, 3>,
    mask_bias: Tensor<B, 4>,
) -> Tensor<B, 3> {
    let [batch, seq, width] = hidden.dims();
    if batch * seq == 0 {
        return tensor(Vec::new(), [batch, seq, width]);
    }
    let (q, _) = matmul(query, hidden.clone());
    let (k, _) = matmul(key, hidden.clone());
    let (v, _) = matmul(value, hidden);
    let (bq, bk, bv) = (bias(query, width), bias(key, width), bias(value, width));
    let mask = contiguous(mask_bias);
    let heads = Heads {
        bq: slice(&bq),
        bk: slice(&bk),
        bv: slice(&bv),
        seq,
        width,
        num_heads,
    };
    let mask = slice(&mask);
    let mut out = vec![0f32; batch * seq * width];
    let rows = seq * width;
    out.par_chunks_mut(rows)
        .zip(q.par_chunks(rows))
        .zip(k.par_chunks(rows).zip(v.par_chunks(rows)))
        .zip(mask.par_chunks(seq))
        .for_each(|(((out, q), (k, v)), mask)| {
            Arch::new().dispatch(Sequence {
                heads: &heads,
                q,
                k,
                v,
                mask,
                out,
            })
        });
    tensor(out, [batch, seq, width])
}

// The row kernels as pulp `WithSimd` operations: `Arch::dispatch` runs them in a function
// compiled for the CPU's best SIMD level (AVX-512, AVX2 + FMA, …) into which their
// `#[inline(always)]` bodies are inlined, so the elementwise loops vectorise to its width.

/// `rows[i] = gelu(rows[i] + bias)`, row by row.
struct BiasGelu<'a> {
    rows: &'a mut [f32],
    bias: &'a [f32],
}

impl WithSimd for BiasGelu<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: Simd>(self, _: S) {
        for row in self.rows.chunks_exact_mut(self.bias.len()) {
            for (v, b) in row.iter_mut().zip(self.bias) {
                *v = gelu_f32(*v + b);
            }
        }
    }
}

/// `rows[i] += bias + residual[i]`, row by row.
struct BiasResidual<'a> {
    rows: &'a mut [f32],
    bias: &'a [f32],
    residual: &'a [f32],
}

impl WithSimd for BiasResidual<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: Simd>(self, _: S) {
        let width = self.bias.len();
        for (row, res) in self
            .rows
            .chunks_exact_mut(width)
            .zip(self.residual.chunks_exact(width))
        {
            for ((v, b), r) in row.iter_mut().zip(self.bias).zip(res) {
                *v += b + r;
            }
        }
    }
}

/// [`Heads::sequence`] on one sequence.
struct Sequence<'a> {
    heads: &'a Heads<'a>,
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    mask: &'a [f32],
    out: &'a mut [f32],
}

impl WithSimd for Sequence<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: Simd>(self, _: S) {
        self.heads
            .sequence(self.q, self.k, self.v, self.mask, self.out);
    }
}

/// One sequence's attention over all heads; the projections' biases are added on the way.
struct Heads<'a> {
    bq: &'a [f32],
    bk: &'a [f32],
    bv: &'a [f32],
    seq: usize,
    width: usize,
    num_heads: usize,
}

impl Heads<'_> {
    /// `q`, `k`, `v`, `out`: `[seq, width]` row-major; `mask`: `[seq]`, added to the scores.
    /// Inlined into the SIMD dispatch of its caller; the reductions (max, sum) run in their
    /// own loops so the elementwise ones vectorise, and in a fixed order, so results do not
    /// depend on the SIMD width.
    #[inline(always)]
    fn sequence(&self, q: &[f32], k: &[f32], v: &[f32], mask: &[f32], out: &mut [f32]) {
        let (seq, width) = (self.seq, self.width);
        let head_dim = width / self.num_heads;
        let scale = 1.0 / (head_dim as f32).sqrt();
        // Keys transposed ([head_dim, seq]) so that a query row meets them as contiguous
        // rows of the score loop; values as [seq, head_dim].
        let mut keys_t = vec![0f32; head_dim * seq];
        let mut values = vec![0f32; seq * head_dim];
        let mut scores = vec![0f32; seq];
        let mut query = vec![0f32; head_dim];
        for h in 0..self.num_heads {
            let cols = h * head_dim..(h + 1) * head_dim;
            for j in 0..seq {
                let row = j * width + cols.start;
                for d in 0..head_dim {
                    keys_t[d * seq + j] = k[row + d] + self.bk[cols.start + d];
                }
                for ((dst, x), b) in values[j * head_dim..(j + 1) * head_dim]
                    .iter_mut()
                    .zip(&v[row..row + head_dim])
                    .zip(&self.bv[cols.clone()])
                {
                    *dst = x + b;
                }
            }
            for i in 0..seq {
                let row = i * width + cols.start;
                for ((dst, x), b) in query
                    .iter_mut()
                    .zip(&q[row..row + head_dim])
                    .zip(&self.bq[cols.clone()])
                {
                    *dst = x + b;
                }
                dot_keys(&query, &keys_t, &mut scores);
                for (s, m) in scores.iter_mut().zip(mask) {
                    *s = *s * scale + m;
                }
                let max = lanes(&scores, f32::NEG_INFINITY, f32::max);
                for s in scores.iter_mut() {
                    *s = exp_f32(*s - max);
                }
                let inv = 1.0 / lanes(&scores, 0.0, |a, b| a + b);
                let ctx = &mut out[row..row + head_dim];
                match head_dim {
                    32 => weighted_sum::<32>(&scores, &values, inv, ctx),
                    64 => weighted_sum::<64>(&scores, &values, inv, ctx),
                    128 => weighted_sum::<128>(&scores, &values, inv, ctx),
                    _ => {
                        ctx.fill(0.0);
                        for (&p, v) in scores.iter().zip(values.chunks_exact(head_dim)) {
                            for (c, x) in ctx.iter_mut().zip(v) {
                                *c += p * x;
                            }
                        }
                        for c in ctx.iter_mut() {
                            *c *= inv;
                        }
                    }
                }
            }
        }
    }
}

/// `scores[j] = Σ_d query[d] keys_t[d][j]` (`keys_t`: `[head_dim, seq]`), 16 keys at a time
/// in a fixed-size accumulator that stays in registers over the `d` loop.
#[inline(always)]
fn dot_keys(query: &[f32], keys_t: &[f32], scores: &mut [f32]) {
    const BLOCK: usize = 16;
    let seq = scores.len();
    let mut j0 = 0;
    for block in scores.chunks_exact_mut(BLOCK) {
        let mut acc = [0f32; BLOCK];
        for (&qd, row) in query.iter().zip(keys_t.chunks_exact(seq)) {
            for (a, k) in acc.iter_mut().zip(&row[j0..j0 + BLOCK]) {
                *a += qd * k;
            }
        }
        block.copy_from_slice(&acc);
        j0 += BLOCK;
    }
    let tail = &mut scores[j0..];
    tail.fill(0.0);
    for (&qd, row) in query.iter().zip(keys_t.chunks_exact(seq)) {
        for (s, k) in tail.iter_mut().zip(&row[j0..]) {
            *s += qd * k;
        }
    }
}

/// `ctx = inv · Σ_j p[j] values[j]` (`values`: `[seq, N]`), accumulated in registers.
#[inline(always)]
fn weighted_sum<const N: usize>(p: &[f32], values: &[f32], inv: f32, ctx: &mut [f32]) {
    let mut acc = [0f32; N];
    for (&pj, v) in p.iter().zip(values.chunks_exact(N)) {
        for (a, x) in acc.iter_mut().zip(v) {
            *a += pj * x;
        }
    }
    for (c, a) in ctx.iter_mut().zip(acc) {
        *c = a * inv;
    }
}
