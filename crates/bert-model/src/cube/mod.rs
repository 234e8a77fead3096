//! Fused f32 training kernels for Burn's GPU backends, written once in CubeCL (crate feature
//! `cube`; `wgpu` and `cuda` name the backends).
//!
//! Burn's `Wgpu` and `Cuda` (with its `fusion` feature, which this crate's `wgpu` and `cuda`
//! features switch on) are `Fusion<CubeBackend<…>>`: elementwise chains fuse into generated
//! kernels, but reductions and the ops around them stay apart, and under autodiff Burn's
//! backward of each composed op is its own set of launches. These kernels do each chain below
//! in one launch forward and one (or two) backward, on `Autodiff<Wgpu>` and `Autodiff<Cuda>`
//! f32 tensors:
//!
//! | op | kernels (module `kernels`) | replaces |
//! |---|---|---|
//! | `layer_norm` (with or without the residual add) | one row kernel forward; one row kernel (input gradient) and one column kernel (gamma/beta partials) backward | the residual add, Burn's composed LayerNorm (mean, centre, variance, divide, scale, shift) and their backward |
//! | `bias_gelu` (`BertIntermediate`) | one elementwise kernel each way | bias add, exact GELU (`erf`) and backward |
//! | `cross_entropy` (MLM, NSP and head losses) | one row kernel forward (log-sum-exp per row, the logits never copied), one elementwise kernel backward | `log_softmax`, `gather`, `mean` and backward |
//! | `adamw` (the optimizer, on the inner backend) | one elementwise kernel per parameter tensor | the moment updates, bias correction, step and decoupled decay |
//!
//! A kernel joins fusion's queue as a custom operation (module `fusion`); its autodiff op
//! records a backward that queues the backward kernels (module `train`). [`crate::ops`]
//! chooses them for f32 tensors of these backends while [`crate::ops::fused_kernels`] is on;
//! everything else takes Burn's generic ops. Tests (module `tests`, on wgpu: Mesa's software
//! Vulkan in CI) compare values and gradients with the generic ops.

use std::any::Any;

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};

mod attention;
mod fusion;
mod kernels;
#[cfg(test)]
mod tests;
mod train;

use fusion::FusedCube;
use train::Ad;

/// Evaluates `$body` with `$R`/`$BT` the runtime and bool element of the fused CubeCL backend
/// that `$B` is (wrapped in `$wrap`: `Ad` or `FusedCube`), returning its value; unreachable
/// for any other backend (callers check with [`is_autodiff_cube`] or [`is_cube`] first).
macro_rules! on_cube {
    ($wrap:ident, $B:ty, |$R:ident, $BT:ident| $body:expr) => {{
        #[cfg(feature = "wgpu")]
        {
            type $R = cubecl::wgpu::WgpuRuntime;
            type $BT = u32;
            if std::any::TypeId::of::<$B>() == std::any::TypeId::of::<$wrap<$R, $BT>>() {
                return $body;
            }
        }
        #[cfg(feature = "cuda")]
        {
            type $R = cubecl::cuda::CudaRuntime;
            type $BT = u8;
            if std::any::TypeId::of::<$B>() == std::any::TypeId::of::<$wrap<$R, $BT>>() {
                return $body;
            }
        }
        unreachable!("crate::ops checks the backend before calling a CubeCL kernel")
    }};
}

/// Whether `B` is `$wrap<R, BT>` for a fused CubeCL backend compiled in.
macro_rules! is {
    ($wrap:ident, $B:ty) => {{
        let id = std::any::TypeId::of::<$B>();
        #[cfg(feature = "wgpu")]
        if id == std::any::TypeId::of::<$wrap<cubecl::wgpu::WgpuRuntime, u32>>() {
            return true;
        }
        #[cfg(feature = "cuda")]
        if id == std::any::TypeId::of::<$wrap<cubecl::cuda::CudaRuntime, u8>>() {
            return true;
        }
        let _ = id;
        false
    }};
}

/// Whether `B` is `Autodiff` over one of Burn's fused CubeCL backends compiled in
/// (`Autodiff<burn::backend::Wgpu>`, `Autodiff<burn::backend::Cuda>`).
pub(crate) fn is_autodiff_cube<B: Backend>() -> bool {
    is!(Ad, B)
}

/// Whether `B` is one of Burn's fused CubeCL backends compiled in (no autodiff).
pub(crate) fn is_cube<B: Backend>() -> bool {
    is!(FusedCube, B)
}

/// `x` as `U`, which it is where the kernels run (a tensor of a generic backend that is the
/// fused CubeCL one): moved through `Any`, not copied.
fn retype<T: Any, U: Any>(x: T) -> U {
    let any: Box<dyn Any> = Box::new(x);
    *any.downcast::<U>()
        .unwrap_or_else(|_| panic!("CubeCL kernels take tensors of the backend crate::ops checked"))
}

pub(crate) use attention::MAX_SEQ as MAX_ATTENTION_SEQ;
pub(crate) use kernels::AdamWScalars;

/// `layer_norm(x + residual)` (or of `x`) over the last dimension; `B` an autodiff CubeCL
/// backend, f32.
pub(crate) fn layer_norm<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    residual: Option<Tensor<B, D>>,
    gamma: Tensor<B, 1>,
    beta: Tensor<B, 1>,
    epsilon: f64,
) -> Tensor<B, D> {
    on_cube!(Ad, B, |R, BT| retype(train::layer_norm::<R, BT, D>(
        retype(x),
        residual.map(retype),
        retype(gamma),
        retype(beta),
        epsilon,
    )))
}

/// `gelu(z + bias)`; `B` an autodiff CubeCL backend, f32.
pub(crate) fn bias_gelu<B: Backend, const D: usize>(
    z: Tensor<B, D>,
    bias: Tensor<B, 1>,
) -> Tensor<B, D> {
    on_cube!(Ad, B, |R, BT| retype(train::bias_gelu::<R, BT, D>(
        retype(z),
        retype(bias)
    )))
}

/// Mean cross-entropy, `[1]`; `B` an autodiff CubeCL backend, f32 logits.
pub(crate) fn cross_entropy<B: Backend>(
    logits: Tensor<B, 2>,
    targets: Tensor<B, 1, Int>,
) -> Tensor<B, 1> {
    on_cube!(Ad, B, |R, BT| retype(train::cross_entropy::<R, BT>(
        retype(logits),
        retype(targets)
    )))
}

/// One AdamW step, `(next, m, v)`; `B` a CubeCL backend (no autodiff), f32.
pub(crate) fn adamw<B: Backend>(
    value: Tensor<B, 1>,
    grad: Tensor<B, 1>,
    m: Tensor<B, 1>,
    v: Tensor<B, 1>,
    scale: Option<Tensor<B, 1>>,
    scalars: AdamWScalars,
) -> [Tensor<B, 1>; 3] {
    on_cube!(FusedCube, B, |R, BT| retype(train::adamw::<R, BT>(
        retype(value),
        retype(grad),
        retype(m),
        retype(v),
        scale.map(retype),
        scalars,
    )))
}

/// Self-attention context `[batch, seq, heads · head_dim]` from the projections `q`, `k`, `v`
/// (that shape too), `mask_bias` `[batch, 1, 1, seq]` and dropout `prob` on the
/// probabilities; `B` an autodiff CubeCL backend, f32, `seq` ≤ [`MAX_ATTENTION_SEQ`]. The
/// dropout seed comes from this thread's stream ([`crate::dropout::set_thread_seed`]) when it
/// has one, else from the backend's RNG, on the device (no host read).
pub(crate) fn attention<B: Backend>(
    q: Tensor<B, 3>,
    k: Tensor<B, 3>,
    v: Tensor<B, 3>,
    mask_bias: Tensor<B, 4>,
    heads: usize,
    prob: f64,
) -> Tensor<B, 3> {
    on_cube!(Ad, B, |R, BT| {
        let device = q.device();
        let device: burn::tensor::Device<FusedCube<R, BT>> = retype(device);
        let seed = if prob <= 0.0 {
            Tensor::<FusedCube<R, BT>, 1, Int>::zeros([1], &device)
        } else if let Some(seed) = crate::dropout::next_thread_seed() {
            // The low 31 bits: the kernels read the seed as an i32 tensor.
            let seed = (seed & 0x7fff_ffff) as i32;
            Tensor::from_data(burn::tensor::TensorData::new(vec![seed], [1]), &device)
        } else {
            Tensor::random(
                [1],
                burn::tensor::Distribution::Uniform(0.0, 2_147_483_647.0),
                &device,
            )
        };
        retype(attention::attention::<R, BT>(
            retype(q),
            retype(k),
            retype(v),
            retype(mask_bias),
            heads,
            prob,
            seed,
        ))
    })
}
