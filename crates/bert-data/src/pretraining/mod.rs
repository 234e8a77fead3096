//! BERT pretraining data: corpus preparation into shards, NSP instances, MLM masking and the
//! resumable batch stream.

pub mod config;
pub mod instances;
pub mod masking;
mod prepared;
pub mod shards;
pub mod stream;

pub use config::PretrainingDataConfig;
pub use instances::{
    Documents, Instance, InstanceConfig, instances_from_document, truncate_seq_pair,
};
pub use masking::{
    IGNORE_INDEX, MaskVocab, Masked, MaskingConfig, MaskingMode, mask, mask_dynamic, mask_static,
};
pub use shards::{
    PrepareOptions, PrepareReport, PreparedCorpus, ShardIndex, prepare, read_documents,
};
pub use stream::{
    PretrainingBatch, PretrainingExample, PretrainingStream, StreamConfig, StreamPosition, collate,
};
