//! [`BertTokenizer`]: WordPiece tokenization through the Hugging Face `tokenizers` crate.
//!
//! Loads `tokenizer.json` from a model directory, or builds the BERT pipeline from `vocab.txt`
//! and `tokenizer_config.json` (BERT normalizer: clean text, CJK spacing, lowercase and accent
//! stripping per `do_lower_case`/`strip_accents`; BERT pre-tokenizer; WordPiece with `[UNK]` for
//! words over 100 characters; `[CLS] A [SEP] (B [SEP])` template). The padding and truncation
//! settings stored in `tokenizer.json` are cleared: padding is the batcher's job and truncation
//! is chosen per call ([`BertTokenizer::with_truncation`]).

use std::path::Path;

use serde::{Deserialize, Serialize};
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::{
    AddedToken, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy,
};

use crate::error::DataError;

/// How a sequence (pair) longer than the maximum length is shortened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Truncation {
    /// Remove one token at a time from the longer segment (HF `longest_first`).
    #[default]
    LongestFirst,
    /// Only shorten the first segment.
    OnlyFirst,
    /// Only shorten the second segment.
    OnlySecond,
}

impl std::str::FromStr for Truncation {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.replace('_', "-").as_str() {
            "longest-first" => Ok(Self::LongestFirst),
            "only-first" => Ok(Self::OnlyFirst),
            "only-second" => Ok(Self::OnlySecond),
            other => Err(DataError::Encoding(format!(
                "unknown truncation strategy '{other}' (longest-first, only-first, only-second)"
            ))),
        }
    }
}

/// One encoded input: `[CLS] A [SEP]` or `[CLS] A [SEP] B [SEP]`, unpadded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Encoded {
    /// WordPiece tokens.
    pub tokens: Vec<String>,
    /// Their ids.
    pub input_ids: Vec<u32>,
    /// Segment ids: 0 for `[CLS] A [SEP]`, 1 for `B [SEP]`.
    pub token_type_ids: Vec<u32>,
    /// All ones (padding is added by the batcher).
    pub attention_mask: Vec<u32>,
    /// 1 for `[CLS]`/`[SEP]`, 0 for text tokens.
    pub special_tokens_mask: Vec<u32>,
    /// Index of the word each token comes from, within its segment (`None` for specials).
    pub word_ids: Vec<Option<u32>>,
    /// Character offsets `(start, end)` into the token's own segment (`(0, 0)` for specials).
    pub offsets: Vec<(usize, usize)>,
}

impl Encoded {
    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }

    /// Whether there are no tokens.
    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }

    /// An error when the encoding is longer than `max_length` (inputs encoded without
    /// truncation must fit the model).
    pub fn ensure_fits(&self, max_length: usize) -> Result<(), DataError> {
        if self.len() > max_length {
            return Err(DataError::Encoding(format!(
                "{} tokens, more than the maximum length {max_length}; enable truncation or shorten the input",
                self.len()
            )));
        }
        Ok(())
    }
}

/// One window of a pair encoding and the sequence id (0, 1, `None` for specials) of each token.
pub type Window = (Encoded, Vec<Option<usize>>);

/// The special tokens BERT needs, with their ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecialTokens {
    /// `[CLS]`.
    pub cls: u32,
    /// `[SEP]`.
    pub sep: u32,
    /// `[PAD]`.
    pub pad: u32,
    /// `[UNK]`.
    pub unk: u32,
    /// `[MASK]`, when the vocabulary has one.
    pub mask: Option<u32>,
}

/// A BERT WordPiece tokenizer.
#[derive(Clone)]
pub struct BertTokenizer {
    inner: Tokenizer,
    special: SpecialTokens,
    do_lower_case: bool,
    limits: Option<ModelLimits>,
}

/// The sizes of a model's embedding tables: an encoding with an id outside them is an error
/// (see [`BertTokenizer::with_model_limits`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelLimits {
    /// `vocab_size`: token ids must be below it.
    pub vocab_size: usize,
    /// `type_vocab_size`: segment ids must be below it (text pairs need 2).
    pub type_vocab_size: usize,
}

impl std::fmt::Debug for BertTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BertTokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("special", &self.special)
            .field("do_lower_case", &self.do_lower_case)
            .field("limits", &self.limits)
            .finish()
    }
}

fn tok_err(e: impl std::fmt::Display) -> DataError {
    DataError::Tokenizer(e.to_string())
}

/// An error for the first id of `encoded` outside `limits`.
fn check_limits(encoded: &Encoded, limits: ModelLimits) -> Result<(), DataError> {
    let mut ids = encoded.input_ids.iter().zip(&encoded.tokens);
    if let Some((id, token)) = ids.find(|(id, _)| **id as usize >= limits.vocab_size) {
        return Err(DataError::Encoding(format!(
            "token {token:?} has id {id}, outside the model's vocabulary of {} (a tokenizer that does not match the model?)",
            limits.vocab_size
        )));
    }
    if let Some(t) = encoded
        .token_type_ids
        .iter()
        .find(|&&t| t as usize >= limits.type_vocab_size)
    {
        return Err(DataError::Encoding(format!(
            "token type id {t} is outside the model's type_vocab_size {} (text pairs need 2)",
            limits.type_vocab_size
        )));
    }
    Ok(())
}

#[derive(Debug, Deserialize, Default)]
struct TokenizerConfig {
    #[serde(default)]
    do_lower_case: Option<bool>,
    #[serde(default)]
    strip_accents: Option<bool>,
    #[serde(default)]
    tokenize_chinese_chars: Option<bool>,
}

impl BertTokenizer {
    /// Loads the tokenizer of an HF model directory: `tokenizer.json`, else `vocab.txt` with
    /// `tokenizer_config.json` (`do_lower_case` defaults to true, as HF's `BertTokenizer`).
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self, DataError> {
        let dir = dir.as_ref();
        let config_path = dir.join("tokenizer_config.json");
        let config: TokenizerConfig = if config_path.is_file() {
            let text = std::fs::read_to_string(&config_path)
                .map_err(|e| DataError::io(&config_path, e))?;
            serde_json::from_str(&text)
                .map_err(|e| DataError::Tokenizer(format!("{}: {e}", config_path.display())))?
        } else {
            TokenizerConfig::default()
        };
        let json = dir.join("tokenizer.json");
        if json.is_file() {
            return Self::from_file(&json);
        }
        let vocab = dir.join("vocab.txt");
        if vocab.is_file() {
            return Self::from_vocab(
                &vocab,
                config.do_lower_case.unwrap_or(true),
                config.strip_accents,
                config.tokenize_chinese_chars.unwrap_or(true),
            );
        }
        Err(DataError::Tokenizer(format!(
            "{} has neither tokenizer.json nor vocab.txt",
            dir.display()
        )))
    }

    /// Loads a `tokenizer.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, DataError> {
        let path = path.as_ref();
        let inner = Tokenizer::from_file(path)
            .map_err(|e| DataError::Tokenizer(format!("{}: {e}", path.display())))?;
        let lower = serde_json::to_value(inner.get_normalizer())
            .ok()
            .and_then(|v| v.get("lowercase").and_then(|l| l.as_bool()))
            .unwrap_or(false);
        Self::new(inner, lower)
    }

    /// Builds BERT's tokenizer from a `vocab.txt` (one token per line, id = line number).
    pub fn from_vocab(
        vocab: impl AsRef<Path>,
        do_lower_case: bool,
        strip_accents: Option<bool>,
        tokenize_chinese_chars: bool,
    ) -> Result<Self, DataError> {
        let vocab = vocab.as_ref();
        let path = vocab
            .to_str()
            .ok_or_else(|| DataError::Tokenizer(format!("{} is not UTF-8", vocab.display())))?;
        let model = WordPiece::from_file(path)
            .unk_token("[UNK]".into())
            .continuing_subword_prefix("##".into())
            .max_input_chars_per_word(100)
            .build()
            .map_err(|e| DataError::Tokenizer(format!("{}: {e}", vocab.display())))?;
        let mut inner = Tokenizer::new(model);
        inner.with_normalizer(Some(BertNormalizer::new(
            true,
            tokenize_chinese_chars,
            strip_accents,
            do_lower_case,
        )));
        inner.with_pre_tokenizer(Some(BertPreTokenizer));
        inner.with_decoder(Some(tokenizers::decoders::wordpiece::WordPiece::default()));
        let id = |t: &str| {
            inner.token_to_id(t).ok_or_else(|| {
                DataError::Tokenizer(format!("{} has no {t} token", vocab.display()))
            })
        };
        let (cls, sep) = (id("[CLS]")?, id("[SEP]")?);
        inner.with_post_processor(Some(BertProcessing::new(
            ("[SEP]".into(), sep),
            ("[CLS]".into(), cls),
        )));
        Self::new(inner, do_lower_case)
    }

    /// Trains a BERT WordPiece vocabulary on text files (HF `BertWordPieceTokenizer` recipe:
    /// BERT normalizer, lowercasing and accent stripping unless `cased`, specials
    /// `[PAD] [UNK] [CLS] [SEP] [MASK]` as ids 0–4).
    pub fn train(
        files: &[std::path::PathBuf],
        vocab_size: usize,
        cased: bool,
        min_frequency: u64,
        show_progress: bool,
    ) -> Result<Self, DataError> {
        use tokenizers::models::TrainerWrapper;
        use tokenizers::models::wordpiece::WordPieceTrainer;
        if files.is_empty() {
            return Err(DataError::Tokenizer("no training files".into()));
        }
        for f in files {
            if !f.is_file() {
                return Err(DataError::Tokenizer(format!(
                    "{} does not exist",
                    f.display()
                )));
            }
        }
        let specials: Vec<AddedToken> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
            .iter()
            .map(|t| AddedToken::from(*t, true))
            .collect();
        let mut trainer: TrainerWrapper = WordPieceTrainer::builder()
            .vocab_size(vocab_size)
            .min_frequency(min_frequency)
            .show_progress(show_progress)
            .special_tokens(specials)
            .continuing_subword_prefix("##".into())
            .build()
            .into();
        let model = WordPiece::builder()
            .unk_token("[UNK]".into())
            .continuing_subword_prefix("##".into())
            .max_input_chars_per_word(100)
            .build()
            .map_err(tok_err)?;
        let mut inner = Tokenizer::new(model);
        inner.with_normalizer(Some(BertNormalizer::new(true, true, None, !cased)));
        inner.with_pre_tokenizer(Some(BertPreTokenizer));
        inner.with_decoder(Some(tokenizers::decoders::wordpiece::WordPiece::default()));
        let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        inner
            .train_from_files(&mut trainer, names)
            .map_err(|e| DataError::Tokenizer(format!("training failed: {e}")))?;
        let id = |t: &str| {
            inner
                .token_to_id(t)
                .ok_or_else(|| DataError::Tokenizer(format!("trained vocabulary lacks {t}")))
        };
        let (cls, sep) = (id("[CLS]")?, id("[SEP]")?);
        inner.with_post_processor(Some(BertProcessing::new(
            ("[SEP]".into(), sep),
            ("[CLS]".into(), cls),
        )));
        Self::new(inner, !cased)
    }

    fn new(mut inner: Tokenizer, do_lower_case: bool) -> Result<Self, DataError> {
        inner.with_padding(None);
        inner.with_truncation(None).map_err(tok_err)?;
        let required = |t: &str| {
            inner
                .token_to_id(t)
                .ok_or_else(|| DataError::Tokenizer(format!("the vocabulary has no {t} token")))
        };
        let special = SpecialTokens {
            cls: required("[CLS]")?,
            sep: required("[SEP]")?,
            pad: required("[PAD]")?,
            unk: required("[UNK]")?,
            mask: inner.token_to_id("[MASK]"),
        };
        let specials: Vec<AddedToken> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
            .iter()
            .filter(|t| inner.token_to_id(t).is_some())
            .map(|t| AddedToken::from(*t, true))
            .collect();
        inner.add_special_tokens(&specials);
        Ok(Self {
            inner,
            special,
            do_lower_case,
            limits: None,
        })
    }

    /// A copy that truncates every encoding to `max_length` tokens (specials included).
    pub fn with_truncation(
        &self,
        max_length: usize,
        strategy: Truncation,
    ) -> Result<Self, DataError> {
        let mut copy = self.clone();
        let strategy = match strategy {
            Truncation::LongestFirst => TruncationStrategy::LongestFirst,
            Truncation::OnlyFirst => TruncationStrategy::OnlyFirst,
            Truncation::OnlySecond => TruncationStrategy::OnlySecond,
        };
        copy.inner
            .with_truncation(Some(TruncationParams {
                max_length,
                strategy,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(tok_err)?;
        Ok(copy)
    }

    /// Encodes a text or a text pair with `[CLS]`/`[SEP]`, character offsets and word ids.
    pub fn encode(&self, text: &str, text_pair: Option<&str>) -> Result<Encoded, DataError> {
        let encoding = match text_pair {
            Some(pair) => self.inner.encode_char_offsets((text, pair), true),
            None => self.inner.encode_char_offsets(text, true),
        }
        .map_err(|e| DataError::Encoding(format!("cannot encode text: {e}")))?;
        self.encoded(&encoding)
    }

    /// Encodes pre-split words (token classification): word ids index `words`.
    pub fn encode_words(&self, words: &[&str]) -> Result<Encoded, DataError> {
        let encoding = self
            .inner
            .encode_char_offsets(words, true)
            .map_err(|e| DataError::Encoding(format!("cannot encode words: {e}")))?;
        self.encoded(&encoding)
    }

    /// A copy whose encodings must fit a model's embedding tables: a token id at or above
    /// `vocab_size` (a tokenizer that does not match the model) or a segment id at or above
    /// `type_vocab_size` (a text pair for a one-segment model) fails the encoding with an
    /// error naming the token, instead of reaching the model as an out-of-bounds index.
    pub fn with_model_limits(&self, limits: ModelLimits) -> Self {
        let mut copy = self.clone();
        copy.limits = Some(limits);
        copy
    }

    /// The limits set by [`BertTokenizer::with_model_limits`].
    pub fn model_limits(&self) -> Option<ModelLimits> {
        self.limits
    }

    fn encoded(&self, encoding: &tokenizers::Encoding) -> Result<Encoded, DataError> {
        let encoded = Self::encoding(encoding);
        if let Some(limits) = self.limits {
            check_limits(&encoded, limits)?;
        }
        Ok(encoded)
    }

    fn encoding(encoding: &tokenizers::Encoding) -> Encoded {
        Encoded {
            tokens: encoding.get_tokens().to_vec(),
            input_ids: encoding.get_ids().to_vec(),
            token_type_ids: encoding.get_type_ids().to_vec(),
            attention_mask: encoding.get_attention_mask().to_vec(),
            special_tokens_mask: encoding.get_special_tokens_mask().to_vec(),
            word_ids: encoding.get_word_ids().to_vec(),
            offsets: encoding.get_offsets().to_vec(),
        }
    }

    /// A copy that cuts the second segment of a pair into windows of at most `max_length`
    /// tokens overlapping by `stride` tokens (extractive QA's doc stride); see
    /// [`BertTokenizer::encode_pair_windows`].
    pub fn with_windows(&self, max_length: usize, stride: usize) -> Result<Self, DataError> {
        let mut copy = self.clone();
        copy.inner
            .with_truncation(Some(TruncationParams {
                max_length,
                strategy: TruncationStrategy::OnlySecond,
                stride,
                direction: TruncationDirection::Right,
            }))
            .map_err(tok_err)?;
        Ok(copy)
    }

    /// Encodes a pair into every window made by the truncation settings (one window when there
    /// are none), with the sequence id (0/1, `None` for specials) of each token.
    pub fn encode_pair_windows(&self, first: &str, second: &str) -> Result<Vec<Window>, DataError> {
        let mut encoding = self
            .inner
            .encode_char_offsets((first, second), true)
            .map_err(|e| DataError::Encoding(format!("cannot encode pair: {e}")))?;
        let overflow = encoding.take_overflowing();
        std::iter::once(encoding)
            .chain(overflow)
            .map(|e| Ok((self.encoded(&e)?, e.get_sequence_ids())))
            .collect()
    }

    /// WordPiece tokens of a text without specials.
    pub fn tokenize(&self, text: &str) -> Result<Vec<String>, DataError> {
        let encoding = self
            .inner
            .encode(text, false)
            .map_err(|e| DataError::Encoding(format!("cannot encode text: {e}")))?;
        Ok(encoding.get_tokens().to_vec())
    }

    /// Decodes ids to text (WordPiece `##` joined), optionally dropping specials.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, DataError> {
        self.inner.decode(ids, skip_special_tokens).map_err(tok_err)
    }

    /// The special tokens' ids.
    pub fn special_tokens(&self) -> &SpecialTokens {
        &self.special
    }

    /// Id of `[MASK]`, or an error for vocabularies without it.
    pub fn mask_id(&self) -> Result<u32, DataError> {
        self.special
            .mask
            .ok_or_else(|| DataError::Tokenizer("the vocabulary has no [MASK] token".into()))
    }

    /// Number of tokens, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id of a token.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The token of an id.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    /// Writes `tokenizer.json`, `vocab.txt`, `tokenizer_config.json` and
    /// `special_tokens_map.json` into `dir`, loadable by transformers' `AutoTokenizer`.
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<(), DataError> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
        let mut clean = self.inner.clone();
        clean.with_padding(None);
        clean.with_truncation(None).map_err(tok_err)?;
        let json = dir.join("tokenizer.json");
        clean.save(&json, true).map_err(tok_err)?;
        let mut vocab: Vec<(String, u32)> = self.inner.get_vocab(true).into_iter().collect();
        vocab.sort_by_key(|(_, id)| *id);
        let text: String = vocab.iter().map(|(t, _)| format!("{t}\n")).collect();
        let write = |name: &str, body: &str| {
            let path = dir.join(name);
            std::fs::write(&path, body).map_err(|e| DataError::io(&path, e))
        };
        write("vocab.txt", &text)?;
        let config = serde_json::json!({
            "tokenizer_class": "BertTokenizer",
            "do_lower_case": self.do_lower_case,
            "model_max_length": 512,
            "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]",
            "cls_token": "[CLS]", "mask_token": "[MASK]",
        });
        write(
            "tokenizer_config.json",
            &serde_json::to_string_pretty(&config).unwrap_or_default(),
        )?;
        let map = serde_json::json!({
            "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]",
            "cls_token": "[CLS]", "mask_token": "[MASK]",
        });
        write(
            "special_tokens_map.json",
            &serde_json::to_string_pretty(&map).unwrap_or_default(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vocab_dir(tokens: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("vocab.txt"), tokens.join("\n") + "\n").expect("write");
        dir
    }

    const VOCAB: &[&str] = &[
        "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "un", "##aff", "##able",
        "cafe", "!", "中", "国",
    ];

    #[test]
    fn model_limits_refuse_ids_outside_the_tables() {
        let dir = vocab_dir(VOCAB);
        let tok = BertTokenizer::from_dir(dir.path()).expect("tokenizer");
        // "world" is id 6: a model with 6 words cannot embed it.
        let small = tok.with_model_limits(ModelLimits {
            vocab_size: 6,
            type_vocab_size: 2,
        });
        small.encode("hello", None).expect("ids below 6 fit");
        let err = small
            .encode("hello world", None)
            .expect_err("id 6")
            .to_string();
        assert!(
            err.contains("\"world\" has id 6") && err.contains("vocabulary of 6"),
            "{err}"
        );
        let err = small
            .encode_words(&["world"])
            .expect_err("id 6")
            .to_string();
        assert!(err.contains("vocabulary of 6"), "{err}");
        // A pair needs segment id 1.
        let one_segment = tok.with_model_limits(ModelLimits {
            vocab_size: VOCAB.len(),
            type_vocab_size: 1,
        });
        one_segment.encode("hello", None).expect("one segment fits");
        let err = one_segment
            .encode("hello", Some("world"))
            .expect_err("segment 1")
            .to_string();
        assert!(err.contains("type_vocab_size 1"), "{err}");
        let windows = one_segment.with_windows(6, 2).expect("windows");
        assert!(windows.encode_pair_windows("hello", "world").is_err());
        // Without limits nothing is checked.
        tok.encode("hello", Some("world")).expect("no limits");
    }

    #[test]
    fn builds_bert_pipeline_from_vocab_txt() {
        let dir = vocab_dir(VOCAB);
        let tok = BertTokenizer::from_dir(dir.path()).expect("tokenizer");
        let e = tok
            .encode("Hello unaffable Café!", Some("中国"))
            .expect("encode");
        assert_eq!(
            e.tokens,
            vec![
                "[CLS]", "hello", "un", "##aff", "##able", "cafe", "!", "[SEP]", "中", "国",
                "[SEP]"
            ]
        );
        assert_eq!(e.token_type_ids, vec![0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1]);
        assert_eq!(e.special_tokens_mask, vec![1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 1]);
        assert_eq!(e.word_ids[2..5], [Some(1), Some(1), Some(1)]);
        assert_eq!(e.offsets[2], (6, 8));
        assert_eq!(e.offsets[8], (0, 1));
    }

    #[test]
    fn long_words_become_unk_and_mask_is_special() {
        let dir = vocab_dir(VOCAB);
        let tok = BertTokenizer::from_dir(dir.path()).expect("tokenizer");
        let long = "h".repeat(101);
        let e = tok
            .encode(&format!("hello {long} [MASK]"), None)
            .expect("encode");
        assert_eq!(e.tokens, vec!["[CLS]", "hello", "[UNK]", "[MASK]", "[SEP]"]);
        assert_eq!(tok.mask_id().expect("mask"), 4);
    }

    #[test]
    fn truncation_strategies() {
        let dir = vocab_dir(VOCAB);
        let tok = BertTokenizer::from_dir(dir.path()).expect("tokenizer");
        let a = "hello world hello world hello";
        let b = "cafe !";
        let longest = tok.with_truncation(7, Truncation::LongestFirst).expect("t");
        let e = longest.encode(a, Some(b)).expect("encode");
        assert_eq!(e.len(), 7);
        assert_eq!(
            e.tokens,
            vec!["[CLS]", "hello", "world", "[SEP]", "cafe", "!", "[SEP]"]
        );
        let only_second = tok.with_truncation(8, Truncation::OnlySecond).expect("t");
        assert!(
            only_second.encode(a, Some(b)).is_err(),
            "second segment too short to cut"
        );
        let untruncated = tok.encode(a, Some(b)).expect("encode");
        let err = untruncated.ensure_fits(7).expect_err("too long");
        assert!(err.to_string().contains("10 tokens"), "{err}");
        let only_first = tok.with_truncation(6, Truncation::OnlyFirst).expect("t");
        let e = only_first.encode(a, Some(b)).expect("encode");
        assert_eq!(
            e.tokens,
            vec!["[CLS]", "hello", "[SEP]", "cafe", "!", "[SEP]"]
        );
        assert!("middle-out".parse::<Truncation>().is_err());
    }

    #[test]
    fn vocabulary_without_cls_is_a_clear_error() {
        let dir = vocab_dir(&["[PAD]", "[UNK]", "[SEP]", "hello"]);
        let err = BertTokenizer::from_dir(dir.path()).expect_err("no [CLS]");
        assert!(err.to_string().contains("[CLS]"), "{err}");
        let empty = tempfile::tempdir().expect("tempdir");
        let err = BertTokenizer::from_dir(empty.path()).expect_err("no files");
        assert!(err.to_string().contains("vocab.txt"), "{err}");
    }

    #[test]
    fn trains_a_wordpiece_vocabulary() {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = dir.path().join("corpus.txt");
        let line = "The whale swam. The whales swam far away from the ship.\n";
        std::fs::write(&text, line.repeat(50)).expect("write");
        let tok = BertTokenizer::train(&[text], 80, false, 1, false).expect("train");
        assert_eq!(tok.token_to_id("[PAD]"), Some(0));
        assert_eq!(tok.token_to_id("[MASK]"), Some(4));
        assert!(tok.vocab_size() <= 80 && tok.vocab_size() > 30);
        let e = tok.encode("The WHALES swam", None).expect("encode");
        assert_eq!(e.tokens.first().map(String::as_str), Some("[CLS]"));
        assert!(!e.tokens.contains(&"[UNK]".to_string()), "{:?}", e.tokens);
        let out = tempfile::tempdir().expect("tempdir");
        tok.save(out.path()).expect("save");
        let config =
            std::fs::read_to_string(out.path().join("tokenizer_config.json")).expect("cfg");
        assert!(config.contains("\"do_lower_case\": true"));
        assert!(BertTokenizer::train(&[], 80, false, 1, false).is_err());
    }

    #[test]
    fn save_and_reload_gives_same_ids() {
        let dir = vocab_dir(VOCAB);
        let tok = BertTokenizer::from_dir(dir.path()).expect("tokenizer");
        let out = tempfile::tempdir().expect("tempdir");
        tok.save(out.path()).expect("save");
        let again = BertTokenizer::from_dir(out.path()).expect("reload");
        let text = "Hello unaffable world";
        assert_eq!(
            tok.encode(text, None).expect("a").input_ids,
            again.encode(text, None).expect("b").input_ids
        );
        let vocab = std::fs::read_to_string(out.path().join("vocab.txt")).expect("vocab");
        assert_eq!(vocab.lines().collect::<Vec<_>>(), VOCAB);
    }
}
