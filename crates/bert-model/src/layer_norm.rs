//! LayerNorm over the last dimension, as `torch.nn.LayerNorm` (HF key `LayerNorm`, renamed
//! `layer_norm`; `weight`/`bias` are `gamma`/`beta`, see [`crate::checkpoint`]).
//!
//! The same module and record as `burn::nn::LayerNorm` (fields `gamma`, `beta`, `epsilon`), with
//! two differences:
//! - the parameters are made when the module is, not lazily at its first forward (a lazy
//!   parameter first used through a clone of the model is initialised in the clone only, and
//!   gets no gradient on the first step);
//! - it computes in the dtype of its own parameters (mixed precision keeps LayerNorm in f32, as
//!   PyTorch's autocast does) and, on `Autodiff<Flex>` in f32, as one fused op with its own
//!   backward (crate feature `flex`, see [`crate::ops`]; Burn composes it from eight elementwise
//!   ops there).
//!
//! ```
//! use bert_model::layer_norm::LayerNormConfig;
//! use burn::backend::Flex;
//! use burn::tensor::Tensor;
//!
//! let device = Default::default();
//! let norm = LayerNormConfig::new(4).with_epsilon(1e-12).init::<Flex>(&device);
//! let y = norm.forward(Tensor::<Flex, 2>::from_floats([[1.0, 2.0, 3.0, 4.0]], &device));
//! let y = y.to_data().to_vec::<f32>().unwrap();
//! // Mean 0, variance 1 (gamma 1, beta 0).
//! assert!(y.iter().sum::<f32>().abs() < 1e-5);
//! assert!((y.iter().map(|v| v * v).sum::<f32>() / 4.0 - 1.0).abs() < 1e-5);
//! ```

use burn::config::Config;
use burn::module::{Module, Param};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use crate::ops;

/// Configuration of a [`LayerNorm`].
#[derive(Config, Debug)]
pub struct LayerNormConfig {
    /// Size of the normalised (last) dimension.
    pub d_model: usize,
    /// Added to the variance (BERT: `layer_norm_eps`, 1e-12).
    #[config(default = 1e-12)]
    pub epsilon: f64,
}

impl LayerNormConfig {
    /// `gamma` ones, `beta` zeros (as PyTorch), made now.
    pub fn init<B: Backend>(&self, device: &B::Device) -> LayerNorm<B> {
        LayerNorm {
            gamma: Param::from_tensor(Tensor::ones([self.d_model], device)),
            beta: Some(Param::from_tensor(Tensor::zeros([self.d_model], device))),
            epsilon: self.epsilon,
        }
    }
}

/// `(x − mean) / √(var + epsilon) · gamma + beta` over the last dimension.
#[derive(Module, Debug)]
pub struct LayerNorm<B: Backend> {
    /// Scale `[d_model]` (HF `weight`).
    pub gamma: Param<Tensor<B, 1>>,
    /// Shift `[d_model]` (HF `bias`); `None` for none.
    pub beta: Option<Param<Tensor<B, 1>>>,
    /// Added to the variance.
    pub epsilon: f64,
}

impl<B: Backend> LayerNorm<B> {
    /// `[..., d_model]` → `[..., d_model]`, in the input's dtype; computed in the dtype of
    /// `gamma` (see the module docs).
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let (own, input) = (self.gamma.val().dtype(), x.dtype());
        if own == input {
            self.normalize(x)
        } else {
            self.normalize(x.cast(own)).cast(input)
        }
    }

    fn normalize<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let gamma = self.gamma.val();
        let beta = self.beta.as_ref().map(|b| b.val());
        ops::layer_norm(x, gamma, beta, self.epsilon)
    }
}
