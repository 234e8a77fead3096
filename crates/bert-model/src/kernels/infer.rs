//! The inference kernels, forward only, on tensors of flex itself. A tensor of a generic
//! backend `B` is a flex tensor when `B::FloatTensorPrimitive` is `FlexTensor`; it is then moved
//! out of (and back into) its `Tensor` through `Any`, without copying.

use burn::nn::Linear;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorPrimitive};
use burn_flex::FlexTensor;
use pulp::{Arch, Simd, WithSimd};
use rayon::prelude::*;

use super::gemm::{self, View, ViewMut, bias_rows};
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

/// A read-only contiguous f32 view of `x` (copied only when `x` is a strided view).
fn contiguous<B: Backend, const D: usize>(x: Tensor<B, D>) -> FlexTensor {
    into_flex(x).to_contiguous()
}

fn tensor<B: Backend, const D: usize>(data: Vec<f32>, dims: [usize; D]) -> Tensor<B, D> {
    from_flex(from_vec(data, dims))
}

/// `x @ weight` (no bias) into `out` (`[rows, d_out]`, rows = every position of `x`), added to
/// what `out` holds when `accumulate`, else over it (`out` empty: allocated here); returns
/// `x`'s dims with `d_out` last.
fn matmul<B: Backend>(
    dense: &Linear<B>,
    x: Tensor<B, 3>,
    out: &mut Vec<f32>,
    accumulate: bool,
) -> [usize; 3] {
    let [batch, seq, d_in] = x.dims();
    let x = contiguous(x);
    let weight = into_flex(dense.weight.val());
    let weight =
        View::of(&weight).expect("a dense layer's weight is a 2-D f32 tensor (see crate::ops)");
    let d_out = weight.cols();
    if out.is_empty() {
        *out = vec![0f32; batch * seq * d_out];
    }
    gemm::product(
        View::rows(slice(&x), d_in),
        weight,
        ViewMut::rows(out, d_out),
        1.0,
        accumulate,
    );
    [batch, seq, d_out]
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
    let mut y = Vec::new();
    let dims = matmul(dense, x, &mut y, false);
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
    // `bias + residual` first, then the product accumulated onto it: no pass after the GEMM.
    let width = residual.dims()[2];
    let bias = bias(dense, width);
    let residual = contiguous(residual);
    let (bias, residual) = (slice(&bias), slice(&residual));
    let mut y = vec![0f32; residual.len()];
    y.par_chunks_mut(ROWS_PER_TASK * width)
        .zip(residual.par_chunks(ROWS_PER_TASK * width))
        .for_each(|(rows, residual)| {
            Arch::new().dispatch(BiasResidual {
                rows,
                bias,
                residual,
            })
        });
    let dims = matmul(dense, x, &mut y, true);
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
    let [q, k, v] = projections([query, key, value], hidden);
    let mask = contiguous(mask_bias);
    let heads = Heads {
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

/// `q`, `k` and `v` of every row of `hidden` (`[rows, H]` each, biases added): each product
/// accumulates onto its bias.
fn projections<B: Backend>(dense: [&Linear<B>; 3], hidden: Tensor<B, 3>) -> [Vec<f32>; 3] {
    let [batch, seq, width] = hidden.dims();
    dense.map(|d| {
        let bias = bias(d, width);
        let mut out = bias_rows(slice(&bias), batch * seq);
        matmul(d, hidden.clone(), &mut out, true);
        out
    })
}

/// Self-attention within each of several sequences packed one after the other (no padding):
/// - `hidden`: `[1, total, H]`, the sequences' rows in order
/// - `lengths`: the sequences' lengths, summing to `total`
/// - returns `[1, total, H]`
///
/// Call only where `crate::ops` finds a flex f32 tensor.
pub(crate) fn self_attention_packed<B: Backend>(
    query: &Linear<B>,
    key: &Linear<B>,
    value: &Linear<B>,
    num_heads: usize,
    hidden: Tensor<B, 3>,
    lengths: &[usize],
) -> Tensor<B, 3> {
    let [batch, total, width] = hidden.dims();
    assert_eq!(
        lengths.iter().sum::<usize>(),
        batch * total,
        "the packed sequences' lengths add up to the rows"
    );
    let [q, k, v] = projections([query, key, value], hidden);
    let mut out = vec![0f32; batch * total * width];
    let mut pieces = Vec::with_capacity(lengths.len());
    let (mut rest, mut start) = (out.as_mut_slice(), 0);
    for &len in lengths {
        let (piece, tail) = rest.split_at_mut(len * width);
        pieces.push((start * width..(start + len) * width, len, piece));
        (rest, start) = (tail, start + len);
    }
    pieces.into_par_iter().for_each(|(rows, len, out)| {
        let heads = Heads {
            seq: len,
            width,
            num_heads,
        };
        let mask = vec![0f32; len];
        Arch::new().dispatch(Sequence {
            heads: &heads,
            q: &q[rows.clone()],
            k: &k[rows.clone()],
            v: &v[rows],
            mask: &mask,
            out,
        })
    });
    tensor(out, [batch, total, width])
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

/// `rows[i] = bias + residual[i]`, row by row.
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
                *v = b + r;
            }
        }
    }
}

/// [`Heads::sequence`] on one sequence.
struct Sequence<'a> {
    heads: &'a Heads,
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

/// One sequence's attention over all heads (the projections' biases already added).
struct Heads {
    seq: usize,
    width: usize,
    num_heads: usize,
}

impl Heads {
    /// `q`, `k`, `v`, `out`: `[seq, width]` row-major, head `h` in columns `h·d..(h+1)·d`;
    /// `mask`: `[seq]`, added to the scores. Each head's `q kᵀ` and `p v` are GEMMs on views of
    /// its column block (`kᵀ` read in place); the softmax runs in between, its reductions
    /// (max, sum) in their own loops so the elementwise ones vectorise, and in a fixed order,
    /// so results do not depend on the SIMD width. Inlined into the SIMD dispatch of its
    /// caller.
    #[inline(always)]
    fn sequence(&self, q: &[f32], k: &[f32], v: &[f32], mask: &[f32], out: &mut [f32]) {
        let (seq, width) = (self.seq, self.width);
        let head_dim = width / self.num_heads;
        let scale = 1.0 / (head_dim as f32).sqrt();
        let block = |data, col| View::new(data, col, [seq, head_dim], [width, 1]);
        let mut scores = vec![0f32; seq * seq];
        for h in 0..self.num_heads {
            let col = h * head_dim;
            // scores = mask + q kᵀ / √d, then softmax by row.
            for row in scores.chunks_exact_mut(seq) {
                row.copy_from_slice(mask);
            }
            gemm::product(
                block(q, col),
                block(k, col).t(),
                ViewMut::rows(&mut scores, seq),
                scale,
                true,
            );
            for row in scores.chunks_exact_mut(seq) {
                let max = lanes(row, f32::NEG_INFINITY, f32::max);
                for s in row.iter_mut() {
                    *s = exp_f32(*s - max);
                }
                let inv = 1.0 / lanes(row, 0.0, |a, b| a + b);
                for s in row.iter_mut() {
                    *s *= inv;
                }
            }
            gemm::product(
                View::rows(&scores, seq),
                block(v, col),
                ViewMut::new(out, col, [seq, head_dim], width),
                1.0,
                false,
            );
        }
    }
}
