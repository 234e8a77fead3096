//! Self-attention as three CubeCL kernels (f32), dropout on the probabilities included:
//! `context = dropout(softmax(q kᵀ · scale + mask_bias)) · v` per head, forward and backward.
//!
//! Memory-efficient: each cube handles one query row (forward, and the query-side backward)
//! or one key row (the key-side backward) of one head and keeps that row's `seq` scores in
//! shared memory; the `[seq, seq]` probabilities of a head are never written to device
//! memory. The forward keeps one log-sum-exp per row, and the backward recomputes the
//! probabilities from it, as flash attention does. The dropout mask is a hash of
//! `(seed, row, column)` on the device, so the backward redraws exactly the forward's mask.
//!
//! The projections are read where the dense layers wrote them, `[batch, seq, heads · head_dim]`
//! (head `h` is columns `h · head_dim ..`), and the context is written the same way: no head
//! split or merge copies.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::{DType, Int, Shape, Tensor as BurnTensor, TensorPrimitive};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeRuntime};
use cubecl::prelude::*;

use super::fusion::{FusedCube, FusedTensor, queue};
use super::kernels::{block_max, block_sum, empty_like, row_grid, row_index};
use super::train::Ad;

/// Threads of each attention cube.
const THREADS: usize = 128;

/// The longest sequence the kernels take (their shared memory holds two rows of it).
pub(crate) const MAX_SEQ: usize = 2048;

/// The scalars of one attention call.
#[derive(Clone, Copy, Debug)]
struct Shapes {
    heads: usize,
    head_dim: usize,
    seq: usize,
    scale: f32,
    /// Probability of keeping a probability (1 without dropout).
    keep: f32,
}

/// A 32-bit mix (the murmur3 finaliser).
#[cube]
fn mix(x: u32) -> u32 {
    let mut h = x;
    h ^= h >> 16;
    h *= 0x85eb_ca6bu32;
    h ^= h >> 13;
    h *= 0xc2b2_ae35u32;
    h ^= h >> 16;
    h
}

/// Whether dropout keeps the probability at `(row, column)` for `seed`: a hash below
/// `threshold` (`keep · 2³²`).
#[cube]
fn kept(seed: u32, row: u32, column: u32, threshold: u32) -> bool {
    mix(mix(seed ^ mix(row)) ^ column) < threshold
}

/// `p`, dropped (0) or scaled by `1 / keep`, as the mask at `(row, column)` says.
#[cube]
fn dropped(
    p: f32,
    seed: u32,
    row: u32,
    column: u32,
    threshold: u32,
    inv_keep: f32,
    #[comptime] dropout: bool,
) -> f32 {
    if dropout {
        if kept(seed, row, column, threshold) {
            p * inv_keep
        } else {
            f32::new(0.0)
        }
    } else {
        p
    }
}

/// `Σₓ a[a_base + x] · b[b_base + x]` over `head_dim` elements.
#[cube]
fn dot(a: &Tensor<f32>, a_base: usize, b: &Tensor<f32>, b_base: usize, head_dim: usize) -> f32 {
    let mut sum = f32::new(0.0);
    for x in 0..head_dim {
        sum += a[a_base + x] * b[b_base + x];
    }
    sum
}

/// Where row `t` of head `h` of sequence `b` starts in a `[batch, seq, heads · head_dim]`
/// tensor (`width` = heads · head_dim).
#[cube]
fn offset(b: usize, t: usize, h: usize, seq: usize, width: usize, head_dim: usize) -> usize {
    (b * seq + t) * width + h * head_dim
}

/// One query row of one head: scores, softmax (log-sum-exp kept), dropout, `· v`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn attention_forward_kernel(
    q: &Tensor<f32>,
    k: &Tensor<f32>,
    v: &Tensor<f32>,
    mask: &Tensor<f32>,
    seed: &Tensor<i32>,
    out: &mut Tensor<f32>,
    lse: &mut Tensor<f32>,
    heads: u32,
    head_dim: u32,
    scale: f32,
    threshold: u32,
    inv_keep: f32,
    #[comptime] seq: usize,
    #[comptime] dropout: bool,
    #[comptime] threads: usize,
) {
    let row = row_index();
    if row >= lse.len() {
        terminate!();
    }
    let heads = heads as usize;
    let head_dim = head_dim as usize;
    let i = row % seq;
    let bh = row / seq;
    let h = bh % heads;
    let b = bh / heads;
    let width = heads * head_dim;
    let q_base = offset(b, i, h, seq, width, head_dim);
    let tid = UNIT_POS_X as usize;
    let mut scores = SharedMemory::<f32>::new(seq);
    let mut reduce = SharedMemory::<f32>::new(threads);
    let seed = u32::cast_from(seed[0]);

    let mut best = f32::new(-3.4028235e38);
    let mut j = tid;
    while j < seq {
        let k_base = offset(b, j, h, seq, width, head_dim);
        let s = dot(q, q_base, k, k_base, head_dim) * scale + mask[b * seq + j];
        scores[j] = s;
        best = best.max(s);
        j += threads;
    }
    let top = block_max(best, &mut reduce);
    let mut sum = f32::new(0.0);
    let mut j = tid;
    while j < seq {
        let e = (scores[j] - top).exp();
        scores[j] = e;
        sum += e;
        j += threads;
    }
    let total = block_sum(sum, &mut reduce);
    let inv_total = f32::new(1.0) / total;
    let mut j = tid;
    while j < seq {
        scores[j] = dropped(
            scores[j] * inv_total,
            seed,
            row as u32,
            j as u32,
            threshold,
            inv_keep,
            dropout,
        );
        j += threads;
    }
    sync_cube();
    let mut x = tid;
    while x < head_dim {
        let mut acc = f32::new(0.0);
        for j in 0..seq {
            acc += scores[j] * v[offset(b, j, h, seq, width, head_dim) + x];
        }
        out[q_base + x] = acc;
        x += threads;
    }
    if tid == 0 {
        lse[row] = top + total.ln();
    }
}

/// The query side of the backward, one query row `i` of one head: with `p` recomputed from
/// the log-sum-exp, `dP' = dO · vᵀ` through the dropout mask, `D = dO · O` and
/// `dS = p (dP − D)`: `dq = scale · dS · k`; `D` is kept for the key side.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn attention_backward_query_kernel(
    q: &Tensor<f32>,
    k: &Tensor<f32>,
    v: &Tensor<f32>,
    mask: &Tensor<f32>,
    seed: &Tensor<i32>,
    out: &Tensor<f32>,
    lse: &Tensor<f32>,
    grad: &Tensor<f32>,
    dq: &mut Tensor<f32>,
    delta: &mut Tensor<f32>,
    heads: u32,
    head_dim: u32,
    scale: f32,
    threshold: u32,
    inv_keep: f32,
    #[comptime] seq: usize,
    #[comptime] dropout: bool,
    #[comptime] threads: usize,
) {
    let row = row_index();
    if row >= lse.len() {
        terminate!();
    }
    let heads = heads as usize;
    let head_dim = head_dim as usize;
    let i = row % seq;
    let bh = row / seq;
    let h = bh % heads;
    let b = bh / heads;
    let width = heads * head_dim;
    let q_base = offset(b, i, h, seq, width, head_dim);
    let tid = UNIT_POS_X as usize;
    let mut ds = SharedMemory::<f32>::new(seq);
    let mut reduce = SharedMemory::<f32>::new(threads);
    let seed = u32::cast_from(seed[0]);

    let mut partial = f32::new(0.0);
    let mut x = tid;
    while x < head_dim {
        partial += grad[q_base + x] * out[q_base + x];
        x += threads;
    }
    let d = block_sum(partial, &mut reduce);
    let row_lse = lse[row];
    let mut j = tid;
    while j < seq {
        let k_base = offset(b, j, h, seq, width, head_dim);
        let s = dot(q, q_base, k, k_base, head_dim) * scale + mask[b * seq + j];
        let p = (s - row_lse).exp();
        let dp = dropped(
            dot(grad, q_base, v, k_base, head_dim),
            seed,
            row as u32,
            j as u32,
            threshold,
            inv_keep,
            dropout,
        );
        ds[j] = p * (dp - d);
        j += threads;
    }
    sync_cube();
    let mut x = tid;
    while x < head_dim {
        let mut acc = f32::new(0.0);
        for j in 0..seq {
            acc += ds[j] * k[offset(b, j, h, seq, width, head_dim) + x];
        }
        dq[q_base + x] = acc * scale;
        x += threads;
    }
    if tid == 0 {
        delta[row] = d;
    }
}

/// The key side of the backward, one key row `j` of one head: `dv = P'ᵀ · dO` and
/// `dk = scale · dSᵀ · q`, with `P'` and `dS` recomputed over the query rows.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn attention_backward_key_kernel(
    q: &Tensor<f32>,
    k: &Tensor<f32>,
    v: &Tensor<f32>,
    mask: &Tensor<f32>,
    seed: &Tensor<i32>,
    lse: &Tensor<f32>,
    delta: &Tensor<f32>,
    grad: &Tensor<f32>,
    dk: &mut Tensor<f32>,
    dv: &mut Tensor<f32>,
    heads: u32,
    head_dim: u32,
    scale: f32,
    threshold: u32,
    inv_keep: f32,
    #[comptime] seq: usize,
    #[comptime] dropout: bool,
) {
    let key_row = row_index();
    if key_row >= lse.len() {
        terminate!();
    }
    let heads = heads as usize;
    let head_dim = head_dim as usize;
    let j = key_row % seq;
    let bh = key_row / seq;
    let h = bh % heads;
    let b = bh / heads;
    let width = heads * head_dim;
    let k_base = offset(b, j, h, seq, width, head_dim);
    let tid = UNIT_POS_X as usize;
    let threads = CUBE_DIM_X as usize;
    let mut probs = SharedMemory::<f32>::new(seq);
    let mut ds = SharedMemory::<f32>::new(seq);
    let seed = u32::cast_from(seed[0]);
    let bias = mask[b * seq + j];

    let mut i = tid;
    while i < seq {
        let row = bh * seq + i;
        let q_base = offset(b, i, h, seq, width, head_dim);
        let s = dot(q, q_base, k, k_base, head_dim) * scale + bias;
        let p = (s - lse[row]).exp();
        let dp = dropped(
            dot(grad, q_base, v, k_base, head_dim),
            seed,
            row as u32,
            j as u32,
            threshold,
            inv_keep,
            dropout,
        );
        probs[i] = dropped(p, seed, row as u32, j as u32, threshold, inv_keep, dropout);
        ds[i] = p * (dp - delta[row]);
        i += threads;
    }
    sync_cube();
    let mut x = tid;
    while x < head_dim {
        let mut acc_v = f32::new(0.0);
        let mut acc_k = f32::new(0.0);
        for i in 0..seq {
            let base = offset(b, i, h, seq, width, head_dim) + x;
            acc_v += probs[i] * grad[base];
            acc_k += ds[i] * q[base];
        }
        dv[k_base + x] = acc_v;
        dk[k_base + x] = acc_k * scale;
        x += threads;
    }
}

/// `keep · 2³²` as the hash threshold, and `1 / keep`.
fn dropout_scalars(keep: f32) -> (u32, f32) {
    let threshold = (keep as f64 * 4_294_967_296.0).clamp(0.0, u32::MAX as f64) as u32;
    (threshold, 1.0 / keep)
}

fn attention_forward<R: CubeRuntime>(
    [q, k, v, mask, seed]: [CubeTensor<R>; 5],
    s: Shapes,
) -> [CubeTensor<R>; 2] {
    let [q, k, v, mask, seed] = [q, k, v, mask, seed].map(into_contiguous);
    let rows = q.meta.num_elements() / s.head_dim;
    let out = empty_like(&q, q.meta.shape().clone());
    let lse = empty_like(&q, Shape::new([rows]));
    let (threshold, inv_keep) = dropout_scalars(s.keep);
    let client = q.client.clone();
    attention_forward_kernel::launch::<R>(
        &client,
        row_grid(rows),
        CubeDim::new_1d(THREADS as u32),
        q.into_tensor_arg(),
        k.into_tensor_arg(),
        v.into_tensor_arg(),
        mask.into_tensor_arg(),
        seed.into_tensor_arg(),
        out.clone().into_tensor_arg(),
        lse.clone().into_tensor_arg(),
        s.heads as u32,
        s.head_dim as u32,
        s.scale,
        threshold,
        inv_keep,
        s.seq,
        s.keep < 1.0,
        THREADS,
    );
    [out, lse]
}

fn attention_backward<R: CubeRuntime>(
    [q, k, v, mask, seed, out, lse, grad]: [CubeTensor<R>; 8],
    s: Shapes,
) -> [CubeTensor<R>; 3] {
    let [q, k, v, mask, seed, out, lse, grad] =
        [q, k, v, mask, seed, out, lse, grad].map(into_contiguous);
    let rows = q.meta.num_elements() / s.head_dim;
    let dq = empty_like(&q, q.meta.shape().clone());
    let dk = empty_like(&q, q.meta.shape().clone());
    let dv = empty_like(&q, q.meta.shape().clone());
    let delta = empty_like(&q, Shape::new([rows]));
    let (threshold, inv_keep) = dropout_scalars(s.keep);
    let dropout = s.keep < 1.0;
    let client = q.client.clone();
    attention_backward_query_kernel::launch::<R>(
        &client,
        row_grid(rows),
        CubeDim::new_1d(THREADS as u32),
        q.clone().into_tensor_arg(),
        k.clone().into_tensor_arg(),
        v.clone().into_tensor_arg(),
        mask.clone().into_tensor_arg(),
        seed.clone().into_tensor_arg(),
        out.into_tensor_arg(),
        lse.clone().into_tensor_arg(),
        grad.clone().into_tensor_arg(),
        dq.clone().into_tensor_arg(),
        delta.clone().into_tensor_arg(),
        s.heads as u32,
        s.head_dim as u32,
        s.scale,
        threshold,
        inv_keep,
        s.seq,
        dropout,
        THREADS,
    );
    attention_backward_key_kernel::launch::<R>(
        &client,
        row_grid(rows),
        CubeDim::new_1d(THREADS as u32),
        q.into_tensor_arg(),
        k.into_tensor_arg(),
        v.into_tensor_arg(),
        mask.into_tensor_arg(),
        seed.into_tensor_arg(),
        lse.into_tensor_arg(),
        delta.into_tensor_arg(),
        grad.into_tensor_arg(),
        dk.clone().into_tensor_arg(),
        dv.clone().into_tensor_arg(),
        s.heads as u32,
        s.head_dim as u32,
        s.scale,
        threshold,
        inv_keep,
        s.seq,
        dropout,
    );
    [dq, dk, dv]
}

/// The backward of [`attention`], parents `[q, k, v]`.
#[derive(Debug)]
struct AttentionBackward;

/// `q`, `k`, `v`, the mask bias, the seed, the context and the log-sum-exp per row.
#[derive(Debug, Clone)]
struct AttentionState<R: CubeRuntime> {
    tensors: [FusedTensor<R>; 7],
    shapes: Shapes,
}

impl<R: CubeRuntime, BT: BoolElement> Backward<FusedCube<R, BT>, 3> for AttentionBackward {
    type State = AttentionState<R>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<FusedCube<R, BT>>(&ops.node);
        let AttentionState { tensors, shapes } = ops.state;
        let shape = (tensors[0].shape.clone(), DType::F32);
        let mut inputs = tensors.to_vec();
        inputs.push(grad);
        let out = queue::<R, BT>(
            "bert_attention_backward",
            inputs,
            &[shape.clone(), shape.clone(), shape],
            move |t| {
                let t: [_; 8] = t.try_into().expect("eight inputs");
                attention_backward(t, shapes).to_vec()
            },
        );
        for (parent, grad) in ops.parents.into_iter().zip(out) {
            if let Some(node) = parent {
                grads.register::<FusedCube<R, BT>>(node.id, grad);
            }
        }
    }
}

/// The attention context `[batch, seq, heads · head_dim]` of `q`, `k`, `v` (same shape, as
/// the dense layers give them), `mask_bias` `[batch, 1, 1, seq]`, dropout `prob` on the
/// probabilities (its mask from `seed`, a `[1]` int tensor).
pub(crate) fn attention<R: CubeRuntime, BT: BoolElement>(
    q: BurnTensor<Ad<R, BT>, 3>,
    k: BurnTensor<Ad<R, BT>, 3>,
    v: BurnTensor<Ad<R, BT>, 3>,
    mask_bias: BurnTensor<Ad<R, BT>, 4>,
    heads: usize,
    prob: f64,
    seed: BurnTensor<FusedCube<R, BT>, 1, Int>,
) -> BurnTensor<Ad<R, BT>, 3> {
    let [_, seq, width] = q.dims();
    let shapes = Shapes {
        heads,
        head_dim: width / heads,
        seq,
        scale: 1.0 / ((width / heads) as f32).sqrt(),
        keep: (1.0 - prob) as f32,
    };
    let [q, k, v] = [q, k, v].map(|t| t.into_primitive().tensor());
    let mask: FusedTensor<R> = mask_bias.into_primitive().tensor().primitive;
    let seed: FusedTensor<R> = seed.into_primitive();
    let inputs = vec![
        q.primitive.clone(),
        k.primitive.clone(),
        v.primitive.clone(),
        mask.clone(),
        seed.clone(),
    ];
    let rows = q.primitive.shape.num_elements() / shapes.head_dim.max(1);
    let [out, lse]: [FusedTensor<R>; 2] = queue::<R, BT>(
        "bert_attention_forward",
        inputs,
        &[
            (q.primitive.shape.clone(), DType::F32),
            (Shape::new([rows]), DType::F32),
        ],
        move |t| {
            let t: [_; 5] = t.try_into().expect("five inputs");
            attention_forward(t, shapes).to_vec()
        },
    )
    .try_into()
    .expect("two outputs");
    let state = AttentionState {
        tensors: [
            q.primitive,
            k.primitive,
            v.primitive,
            mask,
            seed,
            out.clone(),
            lse,
        ],
        shapes,
    };
    let out = match AttentionBackward
        .prepare::<NoCheckpointing>([q.node, k.node, v.node])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(state, out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    BurnTensor::from_primitive(TensorPrimitive::Float(out))
}

/// The dropout mask the kernels draw for `seed`, computed on the host: `[rows, seq]`
/// (`rows` = batch · heads · seq) of `1 / keep` or 0. Tests build the reference attention
/// with it, so a kernel that drew another mask than the one documented here would fail them.
#[cfg(test)]
pub(crate) fn host_dropout_mask(seed: u32, rows: usize, seq: usize, keep: f32) -> Vec<f32> {
    let (threshold, inv_keep) = dropout_scalars(keep);
    let mix = |mut h: u32| {
        h ^= h >> 16;
        h = h.wrapping_mul(0x85eb_ca6b);
        h ^= h >> 13;
        h = h.wrapping_mul(0xc2b2_ae35);
        h ^= h >> 16;
        h
    };
    (0..rows as u32)
        .flat_map(|row| {
            (0..seq as u32).map(move |j| {
                if mix(mix(seed ^ mix(row)) ^ j) < threshold {
                    inv_keep
                } else {
                    0.0
                }
            })
        })
        .collect()
}
