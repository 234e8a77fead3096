//! # bert-model
//!
//! BERT as [Burn](https://burn.dev) modules, numerically identical to Hugging Face
//! transformers' `modeling_bert.py`, with import and export of HF checkpoints.
//!
//! The crate depends on `burn` without any backend: your project picks one. Module and field
//! names mirror HF (`embeddings.word_embeddings`, `encoder.layer.N.attention.self_attn.query`,
//! `pooler.dense`, `cls.predictions.transform.dense`, `classifier`, `qa_outputs`), so checkpoint
//! keys map one to one; the few renames are listed in [`checkpoint`].
//!
//! ```no_run
//! use bert_model::{BertInput, BertModel, LoadOptions, load_pretrained};
//! use burn::backend::Flex;
//! use burn::tensor::{Int, Tensor};
//!
//! type B = Flex;
//! let device = Default::default();
//! // A Hugging Face model directory: config.json + model.safetensors (or pytorch_model.bin).
//! let (model, config, _report) =
//!     load_pretrained::<B, BertModel<B>>("path/to/all-MiniLM-L6-v2", LoadOptions::strict(), &device)?;
//! // [CLS] hello world [SEP]
//! let ids = Tensor::<B, 2, Int>::from_ints([[101, 7592, 2088, 102]], &device);
//! let out = model.forward(BertInput::new(ids), false);
//! assert_eq!(out.last_hidden_state.dims(), [1, 4, config.hidden_size]);
//! # Ok::<(), bert_model::BertError>(())
//! ```
//!
//! See `examples/custom_head.rs` for putting your own head on the encoder and training it.
//!
//! Every module runs its tensor math through [`ops`], the one place that chooses, per op and
//! per tensor, between a fused kernel and the generic Burn ops (which run on any backend).
//! Crate feature `flex` adds fused f32 kernels for Burn's flex CPU backend (see [`kernels`]):
//! inference kernels on `Flex`, training ops with their own backward on `Autodiff<Flex>`.
//! Crate features `wgpu` and `cuda` add CubeCL training kernels for Burn's fused GPU backends
//! (`Autodiff<Wgpu>`, `Autodiff<Cuda>`: attention with dropout, LayerNorm with the residual,
//! bias + GELU, the cross-entropy, and [`ops::adamw`] on the inner backend), listed in [`ops`].
//! [`ops::set_fused_kernels`] turns all of them off.

pub mod architecture;
pub mod checkpoint;
pub mod config;
#[cfg(feature = "cube")]
mod cube;
pub mod dropout;
pub mod error;
pub mod heads;
pub mod kernels;
pub mod layer_norm;
pub mod loss;
pub mod model;
pub mod ops;
pub mod packed;
pub mod precision;

pub use architecture::Architecture;
pub use checkpoint::{
    LoadOptions, LoadReport, PretrainedBert, load_config, load_pretrained, load_weights,
    save_pretrained,
};
pub use config::{BertConfig, HiddenAct};
pub use error::BertError;
pub use heads::{
    BertForMaskedLM, BertForMultipleChoice, BertForPreTraining, BertForQuestionAnswering,
    BertForSequenceClassification, BertForTokenClassification, PreTrainingOutput,
};
pub use loss::{PreTrainingLoss, PreTrainingTargets};
pub use model::{BertInput, BertModel, BertModelOutput, attention_mask_bias, masked_mean};
pub use packed::{PackedInput, PackedOutput, packed_first, packed_mean};
