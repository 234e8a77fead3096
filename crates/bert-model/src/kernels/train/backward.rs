//! The training ops' backward steps, recorded by their forward passes (module `forward`).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, unary};
use burn::tensor::Shape;
use burn_flex::{Flex, FlexTensor};
use rayon::prelude::*;

use super::forward::permute_heads;
use super::{ELEMENTS_PER_TASK, Kernel, ROWS_PER_TASK, vectorized};
use crate::kernels::gemm::{self, View, ViewMut};
use crate::kernels::simd::{dot, exp_f32, gelu_derivative_f32, lanes};
use crate::kernels::{from_vec, slice};

/// The backward of [`masked_softmax`](super::masked_softmax).
#[derive(Debug)]
pub(super) struct MaskedSoftmax {
    pub(super) scale: f32,
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

/// [`split_heads`](super::split_heads) (`split`) or [`merge_heads`](super::merge_heads); the backward permutes the other way.
#[derive(Debug)]
pub(super) struct PermuteHeads {
    pub(super) split: bool,
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

/// The backward of [`layer_norm`](super::layer_norm).
#[derive(Debug)]
pub(super) struct LayerNormOp;

#[derive(Debug, Clone)]
pub(super) struct LayerNormState {
    /// The normalised input `(x − mean) / √(var + epsilon)`.
    pub(super) xhat: FlexTensor,
    /// `1 / √(var + epsilon)` per row.
    pub(super) rstd: Vec<f32>,
    pub(super) gamma: FlexTensor,
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

/// The backward of [`cross_entropy`](super::cross_entropy).
#[derive(Debug)]
pub(super) struct CrossEntropy;

#[derive(Debug, Clone)]
pub(super) struct CrossEntropyState {
    pub(super) logits: FlexTensor,
    pub(super) lse: Vec<f32>,
    pub(super) targets: Vec<usize>,
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

/// The backward of [`gelu`](super::gelu).
#[derive(Debug)]
pub(super) struct Gelu;

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

/// `dx` of LayerNorm, row by row (see [`layer_norm`](super::layer_norm)).
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

/// The backward of [`dense`](super::dense): `dx = dy Wᵀ`, `dW = xᵀ dy`, `db = Σ_rows dy`.
#[derive(Debug)]
pub(crate) struct DenseOp;

#[derive(Debug, Clone)]
pub(crate) struct DenseState {
    /// The input, contiguous `[batch, seq, d_in]`.
    pub(crate) x: FlexTensor,
    /// The weight `[d_in, d_out]` (any strides).
    pub(crate) weight: FlexTensor,
}

impl Backward<Flex, 3> for DenseOp {
    type State = DenseState;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [x_node, w_node, b_node] = ops.parents;
        let DenseState { x, weight } = ops.state;
        let grad = grads.consume::<Flex>(&ops.node).to_contiguous();
        let w = View::of(&weight).expect("the weight is a 2-D f32 tensor");
        let d_out = w.cols();
        let x_shape = x.layout().shape().clone();
        let d_in = x_shape[x_shape.num_dims() - 1];
        let g = slice(&grad);
        if let Some(node) = x_node {
            let mut dx = vec![0f32; slice(&x).len()];
            gemm::product(
                View::rows(g, d_out),
                w.t(),
                ViewMut::rows(&mut dx, d_in),
                1.0,
                false,
            );
            grads.register::<Flex>(node.id, from_vec(dx, x_shape));
        }
        if let Some(node) = w_node {
            let mut dw = vec![0f32; d_in * d_out];
            gemm::product(
                View::rows(slice(&x), d_in).t(),
                View::rows(g, d_out),
                ViewMut::rows(&mut dw, d_out),
                1.0,
                false,
            );
            grads.register::<Flex>(node.id, from_vec(dw, Shape::new([d_in, d_out])));
        }
        if let Some(node) = b_node {
            // Per task: the column sums of its rows; then the tasks' sums in order, so the
            // result does not depend on the thread count.
            let chunk = ROWS_PER_TASK * d_out.max(1);
            let partial: Vec<Vec<f32>> = g
                .par_chunks(chunk)
                .map(|rows| {
                    let mut sums = vec![0f32; d_out];
                    for row in rows.chunks_exact(d_out.max(1)) {
                        sums.iter_mut().zip(row).for_each(|(s, v)| *s += v);
                    }
                    sums
                })
                .collect();
            let mut db = vec![0f32; d_out];
            for p in &partial {
                db.iter_mut().zip(p).for_each(|(t, s)| *t += s);
            }
            grads.register::<Flex>(node.id, from_vec(db, Shape::new([d_out])));
        }
    }
}
