//! # bert-data
//!
//! Text to BERT inputs: WordPiece tokenization through the Hugging Face `tokenizers` crate,
//! `[CLS] A [SEP] B [SEP]` encoding with segment ids, masks, word ids and offsets, truncation
//! strategies and dynamic padding; MLM/NSP pretraining data from sharded corpora; task
//! datasets. Mostly tensor-free: only [`tensors`] turns host batches into Burn tensors.
//!
//! ```no_run
//! use bert_data::{BertTokenizer, Padding, Truncation, pad_encodings};
//!
//! let tokenizer = BertTokenizer::from_dir("path/to/model")?.with_truncation(128, Truncation::LongestFirst)?;
//! let a = tokenizer.encode("A man is playing a guitar.", None)?;
//! let b = tokenizer.encode("Is this a pair?", Some("Yes, it is."))?;
//! let batch = pad_encodings(&[a, b], tokenizer.special_tokens().pad, Padding::default());
//! assert_eq!(batch.input_ids.len(), 2);
//! # Ok::<(), bert_data::DataError>(())
//! ```

pub mod batch;
pub mod error;
pub mod prefetch;
pub mod pretraining;
pub mod seeds;
pub mod tasks;
pub mod tensors;
pub mod tokenizer;

pub use batch::{PaddedBatch, Padding, pad_encodings, pad_rows};
pub use error::DataError;
pub use tokenizer::{BertTokenizer, Encoded, ModelLimits, SpecialTokens, Truncation};
