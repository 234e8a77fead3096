//! Fused f32 kernels for Burn's CPU backend, flex (crate feature `flex`).
//!
//! On the CPU, Burn runs each tensor op as its own pass over memory, and flex runs the
//! elementwise ones (and several others between BERT's matmuls) on one thread: GELU through a
//! scalar `erf`, the bias and residual adds, the head split/merge copies, the attention mask
//! add, softmax; under autodiff, softmax, log-softmax and the loss are further split into
//! elementwise ops, each with its own backward. These kernels do what a chain of them does in
//! one parallel pass.
//!
//! Inference (tensors of flex itself), on the matmul outputs in place:
//!
//! | kernel (module) | replaces |
//! |---|---|
//! | `dense_gelu` (`BertIntermediate`, GELU) | bias add, exact GELU (`erf`) |
//! | `self_attention` (`BertSelfAttention`) | q/k/v bias adds, head split, `q kᵀ / √d`, mask add, softmax, `p v`, head merge |
//! | `dense_add_layer_norm` (`BertSelfOutput`, `BertOutput`) | bias add, residual add (then flex's fused LayerNorm) |
//!
//! Training (tensors of `Autodiff<Flex>`), ops with their own backward (module `train`):
//!
//! | op | replaces, forward and backward |
//! |---|---|
//! | `masked_softmax` (`BertSelfAttention`) | `softmax(q kᵀ / √d + mask)` |
//! | `gelu` (`BertIntermediate`) | exact GELU |
//! | `cross_entropy` ([`crate::loss::cross_entropy`]) | `-mean(log_softmax(logits)[target])` |
//!
//! and [`crate::dropout::Dropout`] draws its masks in parallel on the flex device.
//!
//! The matmuls stay Burn's (`Tensor::matmul`, flex's multi-threaded GEMM).
//!
//! They run only where they compute the same function as the generic path: flex tensors in
//! f32 (inference), `Autodiff<Flex>` tensors in f32 (training), and [`enabled`] is on.
//! Anything else (GPUs, half precision, other CPU backends) takes the generic Burn ops; both
//! paths are tested against each other (values and gradients) and, through the model, against
//! Hugging Face transformers. Results agree to f32 rounding (GELU's `erf` is a polynomial here,
//! within 2e-7 of libm's).

use std::sync::atomic::{AtomicBool, Ordering};

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns the fused kernels on or off for the whole process (on by default; off measures what
/// they bring: `bert bench encode --no-fused-kernels`, `bert bench train --no-fused-kernels`).
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether the fused kernels may run (see [`set_enabled`]).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Whether the fused kernels take `x`: a flex f32 tensor (never an autodiff one), kernels on.
pub fn active<B: Backend, const D: usize>(x: &Tensor<B, D>) -> bool {
    #[cfg(feature = "flex")]
    {
        enabled() && x.dtype() == DType::F32 && flex::is_flex::<B>()
    }
    #[cfg(not(feature = "flex"))]
    {
        let _ = (x, DType::F32);
        false
    }
}

#[cfg(feature = "flex")]
pub(crate) mod train;

/// `x` as `U`, which it is where the kernels run (a tensor or primitive of a generic backend
/// that is flex, or autodiff over flex): moved through `Any`, not copied. Panics with `what`
/// otherwise (callers check [`active`] or `train::active` first).
#[cfg(feature = "flex")]
fn retype<T: std::any::Any, U: std::any::Any>(x: T, what: &str) -> U {
    let any: Box<dyn std::any::Any> = Box::new(x);
    *any.downcast::<U>().unwrap_or_else(|_| panic!("{what}"))
}

#[cfg(feature = "flex")]
pub(crate) use flex::{dense_add_layer_norm, dense_gelu, dropout_mask, self_attention};

/// Whether [`crate::dropout::Dropout`] draws its mask here (in parallel on the host) for `x`:
/// an f32 tensor on the flex device (autodiff or not), kernels on.
#[cfg(feature = "flex")]
pub(crate) fn host_dropout<B: Backend, const D: usize>(x: &Tensor<B, D>) -> bool {
    enabled() && x.dtype() == DType::F32 && flex::on_flex_device::<B>()
}

/// Output `index` of SplitMix64 (Steele, Lea and Flood 2014) started at `seed`: a counter-based
/// generator, so any element of a stream can be computed on its own, in any order.
#[inline(always)]
#[cfg_attr(not(feature = "flex"), allow(dead_code))]
pub(crate) fn splitmix64(seed: u64, index: u64) -> u64 {
    let mut z = seed.wrapping_add(index.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `exp(x)` in f32 without a libm call, so loops over it vectorise: `x = n ln 2 + r`,
/// `|r| ≤ ln 2 / 2`, a degree-7 Taylor polynomial for `exp(r)` (relative error < 1e-7 before
/// rounding), `2ⁿ` through the exponent bits. 0 below -87.3, and the input clamped above 88.
#[inline(always)]
#[cfg_attr(not(feature = "flex"), allow(dead_code))]
pub(crate) fn exp_f32(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two so that n·LN2_HI is exact for |n| < 2⁸ (Cody and Waite).
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // 1.5 · 2²³: adding and subtracting it rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    let xc = x.clamp(-87.3, 88.0);
    let n = (xc * LOG2_E + ROUND) - ROUND;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    if x < -87.3 { 0.0 } else { p * scale }
}

/// Folds `x` with `op` over 8 interleaved accumulators, then folds those in order: the
/// accumulators vectorise (a chain of dependent scalar adds or maxes would cost more than
/// the products of a score row), and the order is fixed, so the result does not depend
/// on the SIMD width.
#[inline(always)]
#[cfg_attr(not(feature = "flex"), allow(dead_code))]
pub(crate) fn lanes(x: &[f32], init: f32, op: impl Fn(f32, f32) -> f32) -> f32 {
    fold_lanes(x, init, |v| v, op)
}

/// [`lanes`] over `map(x[i])`.
#[inline(always)]
#[cfg_attr(not(feature = "flex"), allow(dead_code))]
pub(crate) fn fold_lanes(
    x: &[f32],
    init: f32,
    map: impl Fn(f32) -> f32,
    op: impl Fn(f32, f32) -> f32,
) -> f32 {
    let mut acc = [init; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a = op(*a, map(*v));
        }
    }
    let mut out = rest.iter().fold(init, |a, &v| op(a, map(v)));
    for a in acc {
        out = op(out, a);
    }
    out
}

/// Exact GELU, `x Φ(x) = x (1 + erf(x / √2)) / 2` (see [`normal_cdf_f32`]).
#[inline(always)]
#[cfg_attr(not(feature = "flex"), allow(dead_code))]
pub(crate) fn gelu_f32(x: f32) -> f32 {
    x * normal_cdf_f32(x)
}

/// The standard normal CDF `Φ(x) = (1 + erf(x / √2)) / 2`, with `erf` from Abramowitz and
/// Stegun 7.1.26 (absolute error ≤ 1.5e-7): `1 - erf(z) = t (a₁ + t (a₂ + …)) e^{-z²}`,
/// `t = 1 / (1 + p z)`. The tail `1 - erf` is used directly for negative `x`, so the result
/// keeps its relative precision far into the negative tail.
#[inline(always)]
#[cfg_attr(not(feature = "flex"), allow(dead_code))]
pub(crate) fn normal_cdf_f32(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        0.254_829_6,
        -0.284_496_74,
        1.421_413_7,
        -1.453_152_1,
        1.061_405_4,
    ];
    let z = x.abs() * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + P * z);
    let poly = t * (A[0] + t * (A[1] + t * (A[2] + t * (A[3] + t * A[4]))));
    // erfc(z) / 2 = (1 - erf(|x| / √2)) / 2 = Φ(-|x|).
    let tail = 0.5 * poly * exp_f32(-z * z);
    if x < 0.0 { tail } else { 1.0 - tail }
}

#[cfg(feature = "flex")]
mod flex {
    //! The kernels on flex tensors. A tensor of a generic backend `B` is a flex tensor when
    //! `B::FloatTensorPrimitive` is `FlexTensor`; it is then moved out of (and back into) its
    //! `Tensor` through `Any`, without copying.

    use std::any::TypeId;

    use burn::nn::Linear;

    use crate::layer_norm::LayerNorm;
    use burn::tensor::backend::Backend;
    use burn::tensor::{Shape, Tensor, TensorData, TensorPrimitive};
    use burn_flex::FlexTensor;
    use pulp::{Arch, Simd, WithSimd};
    use rayon::prelude::*;

    use super::{exp_f32, gelu_f32, lanes, retype};

    /// Rows handed to one rayon task by the row-wise kernels (a few KB to a few hundred KB).
    const ROWS_PER_TASK: usize = 16;

    pub(super) fn is_flex<B: Backend>() -> bool {
        TypeId::of::<B::FloatTensorPrimitive>() == TypeId::of::<FlexTensor>()
    }

    /// Whether `B` runs on flex's device (flex itself, or autodiff over it): host memory.
    pub(super) fn on_flex_device<B: Backend>() -> bool {
        TypeId::of::<B::Device>() == TypeId::of::<burn_flex::FlexDevice>()
    }

    /// A dropout mask: element `i` is `1 / keep` when the `i`-th 32-bit draw of
    /// [`splitmix64`]`(seed, ·)` (two per 64-bit output, low half first) is below
    /// `keep · 2³²`, else 0. Filled in parallel chunks; the result does not depend on them.
    pub(crate) fn dropout_mask(shape: Shape, keep: f64, seed: u64) -> TensorData {
        /// Elements per rayon task (even, so a task starts on a whole 64-bit draw).
        const CHUNK: usize = 1 << 15;
        let threshold = (keep * 4_294_967_296.0).round().clamp(0.0, 4_294_967_296.0) as u64;
        let scale = (1.0 / keep) as f32;
        let pick = |bits: u64| if bits < threshold { scale } else { 0.0 };
        let mut mask = vec![0.0f32; shape.num_elements()];
        mask.par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(task, chunk)| {
                let first = (task * CHUNK / 2) as u64;
                for (j, pair) in chunk.chunks_mut(2).enumerate() {
                    let draw = super::splitmix64(seed, first + j as u64);
                    pair[0] = pick(draw & 0xffff_ffff);
                    if let Some(second) = pair.get_mut(1) {
                        *second = pick(draw >> 32);
                    }
                }
            });
        TensorData::new(mask, shape)
    }

    fn into_flex<B: Backend, const D: usize>(x: Tensor<B, D>) -> FlexTensor {
        match x.into_primitive() {
            TensorPrimitive::Float(t) => retype(t, "fused kernels take flex tensors (see active)"),
            TensorPrimitive::QFloat(_) => panic!("fused kernels take float tensors (see active)"),
        }
    }

    fn from_flex<B: Backend, const D: usize>(t: FlexTensor) -> Tensor<B, D> {
        let primitive = retype(t, "fused kernels return flex tensors (see active)");
        Tensor::from_primitive(TensorPrimitive::Float(primitive))
    }

    /// The elements of `x`, in row-major order, owned (no copy when `x` holds its buffer alone).
    fn owned<B: Backend, const D: usize>(x: Tensor<B, D>) -> Vec<f32> {
        into_flex(x)
            .into_data()
            .into_vec::<f32>()
            .expect("fused kernels take f32 tensors (see active)")
    }

    /// A read-only contiguous f32 view of `x` (copied only when `x` is a strided view).
    fn contiguous<B: Backend, const D: usize>(x: Tensor<B, D>) -> FlexTensor {
        into_flex(x).to_contiguous()
    }

    /// The elements of a contiguous f32 flex tensor.
    pub(super) fn slice(t: &FlexTensor) -> &[f32] {
        t.as_slice::<f32>()
            .expect("contiguous f32 tensor (see active)")
    }

    /// A flex tensor owning `data` (row-major, `shape`).
    pub(super) fn from_vec(data: Vec<f32>, shape: impl Into<Shape>) -> FlexTensor {
        FlexTensor::from_data(TensorData::new(data, shape))
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
    /// `[batch_size, seq_length, d_out]`. Call only where [`active`](super::active) holds.
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
    /// the result `[batch_size, seq_length, H]`. Call only where [`active`](super::active)
    /// holds.
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
    /// Call only where [`active`](super::active) holds.
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
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The parallel mask is the serial definition, element for element, on a length that ends
    /// mid-chunk and mid-pair (a wrong chunk offset repeats or skips draws).
    #[cfg(feature = "flex")]
    #[test]
    fn dropout_mask_is_the_serial_stream() {
        let (len, keep, seed) = (3 * (1 << 15) + 4_321, 0.75, 0xdead_beef);
        let mask = dropout_mask(burn::tensor::Shape::new([len]), keep, seed)
            .to_vec::<f32>()
            .expect("f32 data");
        let expected: Vec<f32> = (0..len)
            .map(|i| {
                let draw = splitmix64(seed, (i / 2) as u64);
                let bits = if i % 2 == 0 {
                    draw & 0xffff_ffff
                } else {
                    draw >> 32
                };
                if (bits as f64) < keep * 4_294_967_296.0 {
                    1.0 / 0.75
                } else {
                    0.0
                }
            })
            .collect();
        assert_eq!(mask, expected);
        let kept = mask.iter().filter(|&&m| m != 0.0).count() as f64 / len as f64;
        assert!((kept - keep).abs() < 0.01, "kept {kept}");
    }

    #[test]
    fn exp_follows_libm() {
        let mut worst = 0f32;
        for i in -100_000..=100_000 {
            let x = i as f32 * 8.7e-4;
            let (got, want) = (exp_f32(x), x.exp());
            worst = worst.max(((got - want) / want).abs());
        }
        assert!(worst < 3e-7, "max relative error {worst}");
        assert_eq!(exp_f32(-1e30), 0.0);
        assert_eq!(exp_f32(f32::MIN), 0.0);
        assert_eq!(exp_f32(0.0), 1.0);
    }

    #[test]
    fn gelu_follows_the_erf_definition() {
        let exact = |x: f64| 0.5 * x * (1.0 + erf_f64(x / std::f64::consts::SQRT_2));
        let mut worst = 0f64;
        for i in -200_000..=200_000 {
            let x = i as f32 * 1e-4;
            let err = (gelu_f32(x) as f64 - exact(x as f64)).abs() / (x as f64).abs().max(1.0);
            worst = worst.max(err);
        }
        assert!(worst < 2e-7, "max error {worst}");
        assert_eq!(gelu_f32(0.0), 0.0);
        assert_eq!(gelu_f32(-30.0), 0.0);
        assert_eq!(gelu_f32(30.0), 30.0);
    }

    #[cfg(feature = "flex")]
    mod paths {
        use crate::{BertConfig, BertInput, BertModel, LoadOptions, load_pretrained};
        use burn::backend::{Autodiff, Flex};
        use burn::module::{AutodiffModule, Param};
        use burn::nn::Linear;
        use burn::tensor::backend::Backend;
        use burn::tensor::{Distribution, Int, Tensor, Tolerance};

        type G = Autodiff<Flex>;

        /// Runs `generic` on `Autodiff<Flex>` (which the kernels never take: the generic path)
        /// and its `valid()` copy on `Flex` (the fused path) over a padded batch with `seq`
        /// positions, and compares every layer's output.
        fn compare(mut generic: BertModel<G>, vocab: usize, seq: usize) {
            // Dropout is live under autodiff: off, to compare the inference function.
            generic.embeddings.dropout.prob = 0.0;
            for layer in &mut generic.encoder.layer {
                layer.attention.self_attn.dropout.prob = 0.0;
                layer.attention.output.dropout.prob = 0.0;
                layer.output.dropout.prob = 0.0;
            }
            let fused: BertModel<Flex> = generic.valid();
            // Three sequences: all of `seq`, half of it, three tokens.
            let lens = [seq, seq / 2, 3];
            let ids: Vec<i32> = lens
                .iter()
                .flat_map(|&n| {
                    (0..seq).map(move |j| {
                        if j < n {
                            (2 + 7 * j % (vocab - 2)) as i32
                        } else {
                            0
                        }
                    })
                })
                .collect();
            let mask: Vec<i32> = lens
                .iter()
                .flat_map(|&n| (0..seq).map(move |j| i32::from(j < n)))
                .collect();
            fn input<B: Backend>(ids: &[i32], mask: &[i32], seq: usize) -> BertInput<B> {
                let device = Default::default();
                let t = |v: &[i32]| {
                    Tensor::<B, 1, Int>::from_ints(v, &device).reshape([v.len() / seq, seq])
                };
                BertInput::new(t(ids)).with_attention_mask(t(mask))
            }
            let a = generic.forward(input(&ids, &mask, seq), true).hidden_states;
            let b = fused.forward(input(&ids, &mask, seq), true).hidden_states;
            let (a, b) = (a.expect("states"), b.expect("states"));
            assert_eq!(a.len(), generic.encoder.layer.len() + 1);
            for (a, b) in a.into_iter().zip(b) {
                b.into_data()
                    .assert_approx_eq::<f32>(&a.inner().into_data(), Tolerance::absolute(1e-5));
            }
        }

        /// The random tiny BERT of the test fixtures (4 heads of 8, non-zero biases, GELU):
        /// the paths agree to f32 noise (max |diff| ≈ 2e-6; the two backends' own LayerNorms
        /// already differ by 5e-7 on the embeddings).
        #[test]
        fn fused_and_generic_paths_agree_on_the_fixture() {
            let dir = concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../tests/fixtures/tiny-bert/BertModel"
            );
            let device = Default::default();
            assert!(super::active(&Tensor::<Flex, 1>::zeros([1], &device)));
            assert!(!super::active(&Tensor::<G, 1>::zeros([1], &device)));
            let (model, config, _) =
                load_pretrained::<G, BertModel<G>>(dir, LoadOptions::strict(), &device)
                    .expect("fixture");
            compare(model, config.vocab_size, 7);
        }

        fn random_bias(linear: &mut Linear<G>) {
            let n = linear.weight.dims()[1];
            let bias = Tensor::random([n], Distribution::Normal(0.0, 0.5), &Default::default());
            linear.bias = Some(Param::from_tensor(bias));
        }

        /// Head sizes with their own register-blocked loops (32, 64) and sequences longer than
        /// the 16-key block of the score loop (block + tail).
        #[test]
        fn fused_and_generic_paths_agree_for_head_sizes_32_and_64() {
            for (hidden, heads) in [(64, 2), (128, 2)] {
                let mut config = BertConfig::tiny();
                config.hidden_size = hidden;
                config.num_attention_heads = heads;
                config.intermediate_size = 2 * hidden;
                config.vocab_size = 40;
                config.max_position_embeddings = 40;
                config.initializer_range = 0.2;
                let mut model = BertModel::<G>::new(&config, false, &Default::default());
                for layer in &mut model.encoder.layer {
                    let attention = &mut layer.attention.self_attn;
                    random_bias(&mut attention.query);
                    random_bias(&mut attention.key);
                    random_bias(&mut attention.value);
                    random_bias(&mut layer.attention.output.dense);
                    random_bias(&mut layer.intermediate.dense);
                    random_bias(&mut layer.output.dense);
                }
                compare(model, config.vocab_size, 37);
            }
        }
    }

    /// erf to double precision (series for |x| < 3, continued fraction beyond): the reference.
    fn erf_f64(x: f64) -> f64 {
        let a = x.abs();
        let value = if a < 3.0 {
            // erf(x) = 2/√π Σ (-1)ⁿ x^(2n+1) / (n! (2n+1))
            let (mut term, mut sum, mut n) = (a, a, 0.0);
            while term.abs() > 1e-17 * sum.abs() {
                n += 1.0;
                term *= -a * a / n;
                sum += term / (2.0 * n + 1.0);
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            // erfc(x) = e^{-x²}/√π · 1/(x + 1/2/(x + 1/(x + 3/2/(x + …))))
            let mut f = a;
            for k in (1..60).rev() {
                f = a + (k as f64 / 2.0) / f;
            }
            1.0 - (-a * a).exp() / (std::f64::consts::PI.sqrt() * f)
        };
        value.copysign(x)
    }
}
