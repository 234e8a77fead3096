//! The kernels as ops of `Autodiff<FusedCube<R, BT>>` (f32), each forward recording its own
//! backward, as Burn's custom-kernel example does; and the AdamW update on the inner backend.

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::{DType, Int, Shape, Tensor, TensorPrimitive};
use burn_cubecl::{BoolElement, CubeRuntime};

use super::fusion::{FusedCube, FusedTensor, queue};
use super::kernels::{self, AdamWScalars};

/// The autodiff backend the ops are written for.
pub(crate) type Ad<R, BT> = Autodiff<FusedCube<R, BT>>;

const F32: DType = DType::F32;

/// Records `$op` with `$state` as the backward of `$out` (parents `$nodes`), returning the
/// autodiff primitive (untracked when no parent needs a gradient).
macro_rules! record {
    ($op:expr, $nodes:expr, $state:expr, $out:expr) => {
        match $op
            .prepare::<NoCheckpointing>($nodes)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish($state, $out),
            OpsKind::UnTracked(prep) => prep.finish($out),
        }
    };
}

fn float<R: CubeRuntime, BT: BoolElement, const D: usize>(
    t: FusedTensor<R>,
) -> Tensor<FusedCube<R, BT>, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

/// The sum over the first dimension of `[chunks, width]` partial sums, `[width]`.
fn sum_chunks<R: CubeRuntime, BT: BoolElement>(partials: FusedTensor<R>) -> FusedTensor<R> {
    let width = partials.shape[1];
    float::<R, BT, 2>(partials)
        .sum_dim(0)
        .reshape([width])
        .into_primitive()
        .tensor()
}

/// The backward of [`layer_norm`], with parents `[x, residual, gamma, beta]` (`N` = 4) or
/// `[x, gamma, beta]` (`N` = 3).
#[derive(Debug)]
struct LayerNormBackward;

#[derive(Debug, Clone)]
struct LayerNormState<R: CubeRuntime> {
    x: FusedTensor<R>,
    residual: Option<FusedTensor<R>>,
    gamma: FusedTensor<R>,
    mean: FusedTensor<R>,
    rstd: FusedTensor<R>,
}

impl<R: CubeRuntime, BT: BoolElement, const N: usize> Backward<FusedCube<R, BT>, N>
    for LayerNormBackward
{
    type State = LayerNormState<R>;

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<FusedCube<R, BT>>(&ops.node);
        let s = ops.state;
        let has_residual = s.residual.is_some();
        let width = s.gamma.shape[0];
        let chunks = kernels::param_grad_chunks(grad.shape.num_elements() / width.max(1));
        let mut inputs = vec![s.x.clone()];
        inputs.extend(s.residual);
        inputs.extend([s.gamma, s.mean, s.rstd, grad]);
        let partial = (Shape::new([chunks, width]), F32);
        let [dx, dgamma, dbeta]: [FusedTensor<R>; 3] = queue::<R, BT>(
            "bert_layer_norm_backward",
            inputs,
            &[(s.x.shape.clone(), F32), partial.clone(), partial],
            move |t| {
                let mut t = t.into_iter();
                let mut next = || t.next().expect("the kernel's inputs");
                let x = next();
                let residual = has_residual.then(&mut next);
                let (gamma, mean, rstd, grad) = (next(), next(), next(), next());
                kernels::layer_norm_backward(x, residual, gamma, mean, rstd, grad).to_vec()
            },
        )
        .try_into()
        .expect("three outputs");
        let mut out = vec![dx.clone()];
        if N == 4 {
            out.push(dx);
        }
        out.push(sum_chunks::<R, BT>(dgamma));
        out.push(sum_chunks::<R, BT>(dbeta));
        for (parent, grad) in ops.parents.into_iter().zip(out) {
            if let Some(node) = parent {
                grads.register::<FusedCube<R, BT>>(node.id, grad);
            }
        }
    }
}

/// `layer_norm(x + residual)` (or of `x` alone) over the last dimension, one kernel each way.
pub(crate) fn layer_norm<R: CubeRuntime, BT: BoolElement, const D: usize>(
    x: Tensor<Ad<R, BT>, D>,
    residual: Option<Tensor<Ad<R, BT>, D>>,
    gamma: Tensor<Ad<R, BT>, 1>,
    beta: Tensor<Ad<R, BT>, 1>,
    epsilon: f64,
) -> Tensor<Ad<R, BT>, D> {
    let x = x.into_primitive().tensor();
    let residual = residual.map(|r| r.into_primitive().tensor());
    let gamma = gamma.into_primitive().tensor();
    let beta = beta.into_primitive().tensor();
    let shape = x.primitive.shape.clone();
    let rows = shape.num_elements() / gamma.primitive.shape[0].max(1);
    let has_residual = residual.is_some();
    let mut inputs = vec![x.primitive.clone()];
    inputs.extend(residual.as_ref().map(|r| r.primitive.clone()));
    inputs.extend([gamma.primitive.clone(), beta.primitive.clone()]);
    let epsilon = epsilon as f32;
    let [out, mean, rstd]: [FusedTensor<R>; 3] = queue::<R, BT>(
        "bert_layer_norm_forward",
        inputs,
        &[
            (shape, F32),
            (Shape::new([rows]), F32),
            (Shape::new([rows]), F32),
        ],
        move |t| {
            let mut t = t.into_iter();
            let mut next = || t.next().expect("the kernel's inputs");
            let x = next();
            let residual = has_residual.then(&mut next);
            let (gamma, beta) = (next(), next());
            kernels::layer_norm_forward(x, residual, gamma, beta, epsilon).to_vec()
        },
    )
    .try_into()
    .expect("three outputs");
    let state = LayerNormState {
        x: x.primitive,
        residual: residual.as_ref().map(|r| r.primitive.clone()),
        gamma: gamma.primitive,
        mean,
        rstd,
    };
    let out = match residual {
        Some(r) => record!(
            LayerNormBackward,
            [x.node, r.node, gamma.node, beta.node],
            state,
            out
        ),
        None => record!(
            LayerNormBackward,
            [x.node, gamma.node, beta.node],
            state,
            out
        ),
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

/// The backward of [`cross_entropy`].
#[derive(Debug)]
struct CrossEntropyBackward;

impl<R: CubeRuntime, BT: BoolElement> Backward<FusedCube<R, BT>, 1> for CrossEntropyBackward {
    /// The logits, the targets and each row's log-sum-exp.
    type State = (FusedTensor<R>, FusedTensor<R>, FusedTensor<R>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<FusedCube<R, BT>>(&ops.node);
        let (logits, targets, lse) = ops.state;
        let [parent] = ops.parents;
        let Some(node) = parent else { return };
        let shape = logits.shape.clone();
        let [dlogits]: [FusedTensor<R>; 1] = queue::<R, BT>(
            "bert_cross_entropy_backward",
            vec![logits, targets, lse, grad],
            &[(shape, F32)],
            |t| {
                let [logits, targets, lse, grad]: [_; 4] = t.try_into().expect("four inputs");
                vec![kernels::cross_entropy_backward(logits, targets, lse, grad)]
            },
        )
        .try_into()
        .expect("one output");
        grads.register::<FusedCube<R, BT>>(node.id, dlogits);
    }
}

/// The mean cross-entropy of `logits` `[n, classes]` against `targets` `[n]`, `[1]`: one row
/// kernel forward (the log-sum-exp kept per row, never a second copy of the logits), one
/// elementwise kernel backward.
pub(crate) fn cross_entropy<R: CubeRuntime, BT: BoolElement>(
    logits: Tensor<Ad<R, BT>, 2>,
    targets: Tensor<Ad<R, BT>, 1, Int>,
) -> Tensor<Ad<R, BT>, 1> {
    let [rows, _] = logits.dims();
    let logits = logits.into_primitive().tensor();
    let targets: FusedTensor<R> = targets.into_primitive();
    let [loss, lse]: [FusedTensor<R>; 2] = queue::<R, BT>(
        "bert_cross_entropy_forward",
        vec![logits.primitive.clone(), targets.clone()],
        &[(Shape::new([rows]), F32), (Shape::new([rows]), F32)],
        |t| {
            let [logits, targets]: [_; 2] = t.try_into().expect("two inputs");
            kernels::cross_entropy_forward(logits, targets).to_vec()
        },
    )
    .try_into()
    .expect("two outputs");
    let mean = float::<R, BT, 1>(loss).mean().into_primitive().tensor();
    let state = (logits.primitive, targets, lse);
    let out = record!(CrossEntropyBackward, [logits.node], state, mean);
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

/// The backward of [`bias_gelu`], parents `[z, bias]`.
#[derive(Debug)]
struct BiasGeluBackward;

impl<R: CubeRuntime, BT: BoolElement> Backward<FusedCube<R, BT>, 2> for BiasGeluBackward {
    /// `z` and the bias.
    type State = (FusedTensor<R>, FusedTensor<R>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<FusedCube<R, BT>>(&ops.node);
        let (z, bias) = ops.state;
        let shape = z.shape.clone();
        let width = bias.shape[0];
        let [dz]: [FusedTensor<R>; 1] = queue::<R, BT>(
            "bert_bias_gelu_backward",
            vec![z, bias, grad],
            &[(shape.clone(), F32)],
            |t| {
                let [z, bias, grad]: [_; 3] = t.try_into().expect("three inputs");
                vec![kernels::bias_gelu_backward(z, bias, grad)]
            },
        )
        .try_into()
        .expect("one output");
        let [z_parent, bias_parent] = ops.parents;
        if let Some(node) = bias_parent {
            let rows = shape.num_elements() / width.max(1);
            let dbias = float::<R, BT, 1>(dz.clone())
                .reshape([rows, width])
                .sum_dim(0)
                .reshape([width])
                .into_primitive()
                .tensor();
            grads.register::<FusedCube<R, BT>>(node.id, dbias);
        }
        if let Some(node) = z_parent {
            grads.register::<FusedCube<R, BT>>(node.id, dz);
        }
    }
}

/// `gelu(z + bias)` (exact GELU), `bias` `[width]` over the last dimension of `z`.
pub(crate) fn bias_gelu<R: CubeRuntime, BT: BoolElement, const D: usize>(
    z: Tensor<Ad<R, BT>, D>,
    bias: Tensor<Ad<R, BT>, 1>,
) -> Tensor<Ad<R, BT>, D> {
    let z = z.into_primitive().tensor();
    let bias = bias.into_primitive().tensor();
    let shape = z.primitive.shape.clone();
    let [out]: [FusedTensor<R>; 1] = queue::<R, BT>(
        "bert_bias_gelu_forward",
        vec![z.primitive.clone(), bias.primitive.clone()],
        &[(shape, F32)],
        |t| {
            let [z, bias]: [_; 2] = t.try_into().expect("two inputs");
            vec![kernels::bias_gelu_forward(z, bias)]
        },
    )
    .try_into()
    .expect("one output");
    let state = (z.primitive, bias.primitive);
    let out = record!(BiasGeluBackward, [z.node, bias.node], state, out);
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

/// One AdamW step of a flattened f32 parameter on the fused backend, one kernel:
/// `(next, m, v)`.
pub(crate) fn adamw<R: CubeRuntime, BT: BoolElement>(
    value: Tensor<FusedCube<R, BT>, 1>,
    grad: Tensor<FusedCube<R, BT>, 1>,
    m: Tensor<FusedCube<R, BT>, 1>,
    v: Tensor<FusedCube<R, BT>, 1>,
    scale: Option<Tensor<FusedCube<R, BT>, 1>>,
    step: AdamWScalars,
) -> [Tensor<FusedCube<R, BT>, 1>; 3] {
    let shape = value.shape();
    let has_scale = scale.is_some();
    let mut inputs: Vec<FusedTensor<R>> = [value, grad, m, v]
        .into_iter()
        .map(|t| t.into_primitive().tensor())
        .collect();
    inputs.extend(scale.map(|s| s.into_primitive().tensor()));
    let out = (shape, F32);
    let [next, m, v]: [FusedTensor<R>; 3] = queue::<R, BT>(
        "bert_adamw",
        inputs,
        &[out.clone(), out.clone(), out],
        move |t| {
            let mut t = t.into_iter();
            let mut next = || t.next().expect("the kernel's inputs");
            let (value, grad, m, v) = (next(), next(), next(), next());
            let scale = has_scale.then(&mut next);
            kernels::adamw(value, grad, m, v, scale, step).to_vec()
        },
    )
    .try_into()
    .expect("three outputs");
    [float(next), float(m), float(v)]
}
