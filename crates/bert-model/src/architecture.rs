//! The Hugging Face architectures (`config.json`'s `architectures`) this crate implements.

use std::fmt;
use std::str::FromStr;

use crate::error::BertError;

/// A BERT class of transformers, by the name written to `architectures`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Architecture {
    /// `BertModel`: the encoder (and pooler) without a head.
    Base,
    /// `BertForPreTraining`: MLM and NSP heads.
    PreTraining,
    /// `BertForMaskedLM`: the MLM head.
    MaskedLm,
    /// `BertForSequenceClassification`: classes (or one score) from the pooled output.
    SequenceClassification,
    /// `BertForTokenClassification`: a tag per token.
    TokenClassification,
    /// `BertForQuestionAnswering`: start and end logits per token.
    QuestionAnswering,
    /// `BertForMultipleChoice`: one score per (context, choice) pair.
    MultipleChoice,
}

impl Architecture {
    /// Every architecture, in the order above.
    pub const ALL: [Self; 7] = [
        Self::Base,
        Self::PreTraining,
        Self::MaskedLm,
        Self::SequenceClassification,
        Self::TokenClassification,
        Self::QuestionAnswering,
        Self::MultipleChoice,
    ];

    /// The transformers class name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Base => "BertModel",
            Self::PreTraining => "BertForPreTraining",
            Self::MaskedLm => "BertForMaskedLM",
            Self::SequenceClassification => "BertForSequenceClassification",
            Self::TokenClassification => "BertForTokenClassification",
            Self::QuestionAnswering => "BertForQuestionAnswering",
            Self::MultipleChoice => "BertForMultipleChoice",
        }
    }

    /// The architecture of a transformers class name, if this crate implements it.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }

    /// The class names, comma-separated (for error messages).
    pub fn names() -> String {
        Self::ALL.map(Self::name).join(", ")
    }
}

impl fmt::Display for Architecture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Architecture {
    type Err = BertError;

    fn from_str(s: &str) -> Result<Self, BertError> {
        Self::from_name(s).ok_or_else(|| {
            BertError::Config(format!(
                "architecture {s} is not supported ({})",
                Self::names()
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Architecture;

    #[test]
    fn names_round_trip() {
        for a in Architecture::ALL {
            assert_eq!(a.name().parse::<Architecture>().expect("known"), a);
        }
        let err = "BertForCausalLM"
            .parse::<Architecture>()
            .expect_err("unknown");
        assert!(err.to_string().contains("BertForCausalLM"), "{err}");
    }
}
