//! Fused f32 kernels for Burn's CPU backend, flex (crate feature `flex`).
//!
//! On the CPU, Burn runs each tensor op as its own pass over memory, and flex runs the
//! elementwise ones (and several others between BERT's matmuls) on one thread: GELU through a
//! scalar `erf`, the bias and residual adds, the head split/merge copies, the attention mask
//! add, softmax; under autodiff, softmax, log-softmax and the loss are further split into
//! elementwise ops, each with its own backward. These kernels do what a chain of them does in
//! one parallel pass.
//!
//! Inference (tensors of flex itself), on the matmul outputs in place (module `infer`):
//!
//! | kernel (module) | replaces |
//! |---|---|
//! | `dense_gelu` (`BertIntermediate`, GELU) | bias add, exact GELU (`erf`) |
//! | `self_attention` (`BertSelfAttention`) | q/k/v bias adds, head split, `q kᵀ / √d`, mask add, softmax, `p v`, head merge |
//! | `dense_add_layer_norm` (`BertSelfOutput`, `BertOutput`) | bias add, residual add (the GEMM accumulates onto them; then flex's fused LayerNorm) |
//!
//! Training (tensors of `Autodiff<Flex>`), ops with their own backward (module `train`):
//!
//! | op | replaces, forward and backward |
//! |---|---|
//! | `masked_softmax`, `split_heads`, `merge_heads` (`BertSelfAttention`) | `softmax(q kᵀ / √d + mask)`, the head split and merge copies |
//! | `gelu` (`BertIntermediate`) | exact GELU |
//! | `layer_norm` ([`crate::layer_norm::LayerNorm`]) | Burn's composed LayerNorm |
//! | `cross_entropy` ([`crate::loss::cross_entropy`]) | `-mean(log_softmax(logits)[target])` |
//!
//! and [`crate::dropout::Dropout`] draws its masks in parallel on the flex device (module
//! `dropout`). The scalar math the loops share (`exp`, `erf`, GELU, fixed-order reductions,
//! SplitMix64) is in module `simd`.
//!
//! The matmuls of training stay Burn's (`Tensor::matmul`, flex's multi-threaded GEMM); the
//! inference kernels call the same GEMM (the `gemm` crate, module `gemm`) on buffers they own,
//! so the dense output is written once (`dense_add_layer_norm` accumulates it onto the bias
//! and residual) without a flex tensor's copies around it.
//!
//! The kernels do not choose where they run: [`crate::ops`] calls them where they compute the
//! same function as the generic path (flex tensors in f32 for inference, `Autodiff<Flex>`
//! tensors in f32 for training) and [`enabled`] is on. GPU training takes the CubeCL kernels
//! of module `cube` (crate features `wgpu`, `cuda`); anything else (half precision, other CPU
//! backends) takes the generic Burn ops; both paths are tested against each other
//! (values and gradients) and, through the model, against Hugging Face transformers. Results
//! agree to f32 rounding (GELU's `erf` is a polynomial here, within 2e-7 of libm's).

pub use crate::ops::{fused_kernels as enabled, set_fused_kernels as set_enabled};

#[cfg(feature = "flex")]
pub(crate) mod dropout;
#[cfg(feature = "flex")]
mod gemm;
#[cfg(feature = "flex")]
pub(crate) mod infer;
#[cfg_attr(not(feature = "flex"), allow(dead_code))]
pub(crate) mod simd;
#[cfg(feature = "flex")]
pub(crate) mod train;

#[cfg(feature = "flex")]
use flex::{from_vec, retype, slice};
#[cfg(feature = "flex")]
pub(crate) use flex::{is_autodiff_flex, is_flex, on_flex_device};

#[cfg(feature = "flex")]
mod flex {
    //! What the inference and training kernels share: which backends they are written for, and
    //! the moves between a generic backend's tensors and flex's.

    use std::any::TypeId;

    use burn::backend::Autodiff;
    use burn::tensor::Shape;
    use burn::tensor::TensorData;
    use burn::tensor::backend::Backend;
    use burn_flex::{Flex, FlexTensor};

    /// Whether `B` is flex itself: its float tensors are `FlexTensor`s.
    pub(crate) fn is_flex<B: Backend>() -> bool {
        TypeId::of::<B::FloatTensorPrimitive>() == TypeId::of::<FlexTensor>()
    }

    /// Whether `B` is `Autodiff<Flex>` (Burn's default checkpointing), the training kernels'
    /// backend.
    pub(crate) fn is_autodiff_flex<B: Backend>() -> bool {
        TypeId::of::<B>() == TypeId::of::<Autodiff<Flex>>()
    }

    /// Whether `B` runs on flex's device (flex itself, or autodiff over it): host memory.
    pub(crate) fn on_flex_device<B: Backend>() -> bool {
        TypeId::of::<B::Device>() == TypeId::of::<burn_flex::FlexDevice>()
    }

    /// `x` as `U`, which it is where the kernels run (a tensor or primitive of a generic backend
    /// that is flex, or autodiff over flex): moved through `Any`, not copied. Panics with `what`
    /// otherwise (the callers in [`crate::ops`] check the backend first).
    pub(super) fn retype<T: std::any::Any, U: std::any::Any>(x: T, what: &str) -> U {
        let any: Box<dyn std::any::Any> = Box::new(x);
        *any.downcast::<U>().unwrap_or_else(|_| panic!("{what}"))
    }

    /// The elements of a contiguous f32 flex tensor.
    pub(super) fn slice(t: &FlexTensor) -> &[f32] {
        t.as_slice::<f32>()
            .expect("contiguous f32 tensor (see crate::ops)")
    }

    /// A flex tensor owning `data` (row-major, `shape`).
    pub(super) fn from_vec(data: Vec<f32>, shape: impl Into<Shape>) -> FlexTensor {
        FlexTensor::from_data(TensorData::new(data, shape))
    }
}
