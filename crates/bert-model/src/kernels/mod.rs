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
//! | `dense_add_layer_norm` (`BertSelfOutput`, `BertOutput`) | bias add, residual add (then flex's fused LayerNorm) |
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
pub(crate) mod dropout;
#[cfg(feature = "flex")]
pub(crate) mod infer;
#[cfg_attr(not(feature = "flex"), allow(dead_code))]
pub(crate) mod simd;
#[cfg(feature = "flex")]
pub(crate) mod train;

#[cfg(feature = "flex")]
pub(crate) use dropout::dropout_mask;
#[cfg(feature = "flex")]
use flex::{from_vec, retype, slice};
#[cfg(feature = "flex")]
pub(crate) use infer::{dense_add_layer_norm, dense_gelu, self_attention};

/// Whether [`crate::dropout::Dropout`] draws its mask here (in parallel on the host) for `x`:
/// an f32 tensor on the flex device (autodiff or not), kernels on.
#[cfg(feature = "flex")]
pub(crate) fn host_dropout<B: Backend, const D: usize>(x: &Tensor<B, D>) -> bool {
    enabled() && x.dtype() == DType::F32 && flex::on_flex_device::<B>()
}

#[cfg(feature = "flex")]
mod flex {
    //! What the inference and training kernels share: which backends they are written for, and
    //! the moves between a generic backend's tensors and flex's.

    use std::any::TypeId;

    use burn::tensor::Shape;
    use burn::tensor::TensorData;
    use burn::tensor::backend::Backend;
    use burn_flex::FlexTensor;

    /// Whether `B` is flex itself: its float tensors are `FlexTensor`s.
    pub(super) fn is_flex<B: Backend>() -> bool {
        TypeId::of::<B::FloatTensorPrimitive>() == TypeId::of::<FlexTensor>()
    }

    /// Whether `B` runs on flex's device (flex itself, or autodiff over it): host memory.
    pub(super) fn on_flex_device<B: Backend>() -> bool {
        TypeId::of::<B::Device>() == TypeId::of::<burn_flex::FlexDevice>()
    }

    /// `x` as `U`, which it is where the kernels run (a tensor or primitive of a generic backend
    /// that is flex, or autodiff over flex): moved through `Any`, not copied. Panics with `what`
    /// otherwise (callers check [`active`](super::active) or `train::active` first).
    pub(super) fn retype<T: std::any::Any, U: std::any::Any>(x: T, what: &str) -> U {
        let any: Box<dyn std::any::Any> = Box::new(x);
        *any.downcast::<U>().unwrap_or_else(|_| panic!("{what}"))
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
}

#[cfg(all(test, feature = "flex"))]
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
