//! Extractive question answering on SQuAD v1.1/v2.0 JSON: question + context windows with a
//! doc stride, answer character spans to token start/end (`[CLS]`, index 0, when the answer
//! is not in the window or the question is unanswerable), and the way back from predicted
//! token spans to the original text.

use std::path::Path;

use serde::Deserialize;

use crate::error::DataError;
use crate::tasks::read_text;
use crate::tokenizer::{BertTokenizer, Encoded};

#[derive(Deserialize)]
struct SquadFile {
    data: Vec<Article>,
}

#[derive(Deserialize)]
struct Article {
    #[serde(default)]
    title: String,
    paragraphs: Vec<Paragraph>,
}

#[derive(Deserialize)]
struct Paragraph {
    context: String,
    qas: Vec<Qa>,
}

#[derive(Deserialize)]
struct Qa {
    id: String,
    question: String,
    #[serde(default)]
    answers: Vec<Answer>,
    #[serde(default)]
    is_impossible: bool,
}

#[derive(Deserialize)]
struct Answer {
    text: String,
    answer_start: usize,
}

/// One question on one context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QaExample {
    /// SQuAD id.
    pub id: String,
    /// Article title (used to split train/eval by article).
    pub title: String,
    /// Question.
    pub question: String,
    /// Context paragraph.
    pub context: String,
    /// Gold answers: text and start character (in chars, as SQuAD counts them).
    pub answers: Vec<(String, usize)>,
    /// SQuAD v2.0 unanswerable question.
    pub is_impossible: bool,
}

/// Reads a SQuAD v1.1 or v2.0 file.
pub fn read_squad(path: impl AsRef<Path>) -> Result<Vec<QaExample>, DataError> {
    let path = path.as_ref();
    let text = read_text(path)?;
    let file: SquadFile = serde_json::from_str(&text).map_err(|e| DataError::Line {
        path: path.to_path_buf(),
        line: e.line(),
        message: format!("not a SQuAD file: {e}"),
    })?;
    let mut out = Vec::new();
    for article in file.data {
        for paragraph in article.paragraphs {
            let chars = paragraph.context.chars().count();
            for qa in paragraph.qas {
                for a in &qa.answers {
                    if a.answer_start + a.text.chars().count() > chars {
                        return Err(DataError::Encoding(format!(
                            "{}: question {}: answer {:?} at {} is outside its context",
                            path.display(),
                            qa.id,
                            a.text,
                            a.answer_start
                        )));
                    }
                }
                out.push(QaExample {
                    id: qa.id,
                    title: article.title.clone(),
                    question: qa.question,
                    context: paragraph.context.clone(),
                    answers: qa
                        .answers
                        .into_iter()
                        .map(|a| (a.text, a.answer_start))
                        .collect(),
                    is_impossible: qa.is_impossible,
                });
            }
        }
    }
    if out.is_empty() {
        return Err(DataError::Encoding(format!(
            "{}: no questions",
            path.display()
        )));
    }
    Ok(out)
}

/// One window of a question over its context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QaFeature {
    /// Index of the example in the input list.
    pub example_index: usize,
    /// `[CLS] question [SEP] context window [SEP]`.
    pub encoding: Encoded,
    /// Character offsets into the context for context tokens, `None` elsewhere.
    pub context_offsets: Vec<Option<(usize, usize)>>,
    /// Start token of the first answer (0 = `[CLS]`: no answer in this window).
    pub start_position: usize,
    /// End token (inclusive).
    pub end_position: usize,
}

/// Windows over the context, each labelled with the first answer's token span. `tokenizer`
/// sets the window length and doc stride: `BertTokenizer::with_windows(max_length, stride)`.
pub fn encode_example(
    tokenizer: &BertTokenizer,
    example: &QaExample,
    example_index: usize,
) -> Result<Vec<QaFeature>, DataError> {
    let windows = tokenizer.encode_pair_windows(&example.question, &example.context)?;
    let answer = (!example.is_impossible)
        .then(|| example.answers.first())
        .flatten()
        .map(|(text, start)| (*start, start + text.chars().count()));
    Ok(windows
        .into_iter()
        .map(|(encoding, sequence_ids)| {
            let context_offsets: Vec<Option<(usize, usize)>> = sequence_ids
                .iter()
                .zip(&encoding.offsets)
                .map(|(seq, off)| (*seq == Some(1)).then_some(*off))
                .collect();
            let (start_position, end_position) = answer
                .and_then(|(s, e)| token_span(&context_offsets, s, e))
                .unwrap_or((0, 0));
            QaFeature {
                example_index,
                encoding,
                context_offsets,
                start_position,
                end_position,
            }
        })
        .collect())
}

/// Token span of a character span `[start, end)`, when the window contains all of it.
pub fn token_span(
    offsets: &[Option<(usize, usize)>],
    start: usize,
    end: usize,
) -> Option<(usize, usize)> {
    let first = offsets.iter().position(Option::is_some)?;
    let last = offsets.iter().rposition(Option::is_some)?;
    let (window_start, window_end) = (offsets[first]?.0, offsets[last]?.1);
    if start < window_start || end > window_end {
        return None;
    }
    // The last token starting at or before the answer start; the first ending at or after its end.
    let s = (first..=last)
        .rev()
        .find(|&i| offsets[i].is_some_and(|o| o.0 <= start))?;
    let e = (first..=last).find(|&i| offsets[i].is_some_and(|o| o.1 >= end))?;
    (s <= e).then_some((s, e))
}

/// The context text covered by tokens `start..=end` (character offsets).
pub fn span_text(
    context: &str,
    offsets: &[Option<(usize, usize)>],
    start: usize,
    end: usize,
) -> Option<String> {
    let (s, _) = offsets.get(start).copied().flatten()?;
    let (_, e) = offsets.get(end).copied().flatten()?;
    Some(context.chars().skip(s).take(e.saturating_sub(s)).collect())
}

/// The best answer span of one window: `(score, start, end)` over the `n_best` top start and end
/// logits, with `start <= end < start + max_answer_length`, both in the context.
pub fn best_span(
    start_logits: &[f32],
    end_logits: &[f32],
    offsets: &[Option<(usize, usize)>],
    n_best: usize,
    max_answer_length: usize,
) -> Option<(f32, usize, usize)> {
    best_spans(
        start_logits,
        end_logits,
        offsets,
        n_best,
        max_answer_length,
        1,
    )
    .into_iter()
    .next()
}

/// The `k` best valid spans of a window as `(score, start, end)`, best first, with the rules
/// of [`best_span`] (the `n_best` best starts × the `n_best` best ends, inside the context, at
/// most `max_answer_length` tokens).
pub fn best_spans(
    start_logits: &[f32],
    end_logits: &[f32],
    offsets: &[Option<(usize, usize)>],
    n_best: usize,
    max_answer_length: usize,
    k: usize,
) -> Vec<(f32, usize, usize)> {
    let top = |logits: &[f32]| {
        let mut idx: Vec<usize> = (0..logits.len()).collect();
        idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        idx.truncate(n_best);
        idx
    };
    let mut spans = Vec::new();
    for &s in &top(start_logits) {
        for &e in &top(end_logits) {
            let valid = offsets.get(s).is_some_and(Option::is_some)
                && offsets.get(e).is_some_and(Option::is_some)
                && s <= e
                && e - s < max_answer_length;
            if valid {
                spans.push((start_logits[s] + end_logits[e], s, e));
            }
        }
    }
    // Stable: among equal scores the earlier start (then end) comes first.
    spans.sort_by(|a, b| b.0.total_cmp(&a.0));
    spans.truncate(k);
    spans
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer() -> (tempfile::TempDir, BertTokenizer) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut vocab: Vec<String> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "?"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        for w in "the whale was white and ishmael sailed on pequod in 1851 who what when captain ahab hunted it ship named".split(' ') {
            vocab.push(w.into());
        }
        std::fs::write(dir.path().join("vocab.txt"), vocab.join("\n")).expect("vocab");
        let tok = BertTokenizer::from_dir(dir.path()).expect("tok");
        (dir, tok)
    }

    fn fixture() -> Vec<QaExample> {
        let context = "Ishmael sailed on the Pequod in 1851. The ship was named Pequod, and the captain was Ahab. Ahab hunted the white whale.";
        let mk = |id: &str, q: &str, a: &str| {
            let start = context.find(a).expect("answer in context");
            QaExample {
                id: id.into(),
                title: "moby".into(),
                question: q.into(),
                context: context.into(),
                answers: vec![(a.into(), context[..start].chars().count())],
                is_impossible: false,
            }
        };
        vec![
            mk("1", "Who sailed?", "Ishmael"),
            mk("2", "When?", "1851"),
            mk("3", "Who was the captain?", "Ahab"),
            mk("4", "What was white?", "white whale"),
            mk("5", "What was the ship named?", "Pequod, and the captain"),
        ]
    }

    #[test]
    fn span_round_trip_recovers_every_answer_in_every_window() {
        let (_d, tok) = tokenizer();
        // Windows of 7+ context tokens stepping by at most 3 hold every answer (5 tokens at most).
        for (max_length, stride) in [(64, 16), (16, 4), (20, 6)] {
            let mut found = vec![false; 5];
            let windows = tok.with_windows(max_length, stride).expect("windows");
            for (i, ex) in fixture().iter().enumerate() {
                let features = encode_example(&windows, ex, i).expect("encode");
                assert!(
                    max_length >= 64 || features.len() > 1,
                    "long contexts make several windows"
                );
                for f in &features {
                    assert!(f.encoding.len() <= max_length);
                    if f.start_position == 0 {
                        continue;
                    }
                    let text = span_text(
                        &ex.context,
                        &f.context_offsets,
                        f.start_position,
                        f.end_position,
                    )
                    .expect("span in context");
                    assert_eq!(text, ex.answers[0].0, "window {max_length}/{stride}");
                    found[i] = true;
                }
            }
            assert!(
                found.iter().all(|&f| f),
                "every answer is inside some window: {found:?}"
            );
        }
    }

    #[test]
    fn unanswerable_and_outside_answers_point_at_cls() {
        let (_d, tok) = tokenizer();
        let mut ex = fixture().remove(3);
        ex.is_impossible = true;
        ex.answers.clear();
        let windows = tok.with_windows(16, 4).expect("windows");
        for f in encode_example(&windows, &ex, 0).expect("encode") {
            assert_eq!((f.start_position, f.end_position), (0, 0));
        }
    }

    #[test]
    fn best_span_respects_context_and_length() {
        let offsets = vec![None, None, Some((0, 3)), Some((4, 8)), Some((9, 12)), None];
        let start = [9.0, 0.0, 1.0, 5.0, 0.0, 0.0];
        let end = [9.0, 0.0, 0.0, 1.0, 4.0, 0.0];
        assert_eq!(best_span(&start, &end, &offsets, 20, 30), Some((9.0, 3, 4)));
        assert_eq!(best_span(&start, &end, &offsets, 20, 1), Some((6.0, 3, 3)));
        // Best first: (3,4) 9, (3,3) 6, (2,4) 5, (4,4) 4, (2,3) 2, (2,2) 1; none through [CLS].
        let three: Vec<(usize, usize)> = best_spans(&start, &end, &offsets, 20, 30, 3)
            .into_iter()
            .map(|(_, s, e)| (s, e))
            .collect();
        assert_eq!(three, [(3, 4), (3, 3), (2, 4)]);
        assert_eq!(best_spans(&start, &end, &offsets, 20, 30, 100).len(), 6);
        assert!(best_spans(&start, &end, &offsets, 20, 30, 0).is_empty());
        assert_eq!(
            span_text("abc defg hij", &offsets, 3, 4).as_deref(),
            Some("defg hij")
        );
    }
}
