//! Every reader parses the gold evaluation files as they are (`../shared/data`, found through
//! `BERT_SHARED_DATA`, which `scripts/test.sh` sets when the folder exists beside the checkout),
//! with the exact counts measured on them. Without the variable the tests say so and pass, except
//! under `CI=true`, where they fail instead of skipping: CI has the data beside its clone. With
//! it, a missing file is a failure.

use std::path::{Path, PathBuf};

use bert_data::BertTokenizer;
use bert_data::tasks::classification::{Columns, LabelSet, read_classification};
use bert_data::tasks::multiple_choice::read_multiple_choice;
use bert_data::tasks::qa::{encode_example, read_squad, span_text};
use bert_data::tasks::token_classification::{encode_sentence, read_token_classification, tag_set};

fn on_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

fn shared() -> Option<PathBuf> {
    match std::env::var_os("BERT_SHARED_DATA") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            assert!(
                dir.is_dir(),
                "BERT_SHARED_DATA={} is not a directory",
                dir.display()
            );
            Some(dir)
        }
        None if on_ci() => panic!(
            "CI is set but BERT_SHARED_DATA is not: the gold data must run on CI \
             (scripts/test.sh sets it when ../shared/data exists beside the checkout)"
        ),
        None => {
            eprintln!(
                "BERT_SHARED_DATA is not set: gold-data tests skipped (scripts/test.sh sets it)"
            );
            None
        }
    }
}

fn minilm() -> BertTokenizer {
    let dir = std::env::var_os("BERT_MINILM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.cache/models/all-MiniLM-L6-v2")
        });
    BertTokenizer::from_dir(&dir).expect("run scripts/fetch_models.sh")
}

fn cols(text: &str, pair: Option<&str>, label: &str, header: bool) -> Columns {
    Columns {
        text: text.into(),
        text_pair: pair.unwrap_or("text_pair").into(),
        label: label.into(),
        header,
    }
}

#[test]
fn glue_tsvs_parse_as_they_are() {
    let Some(data) = shared() else { return };
    let glue = data.join("glue");
    let cases = [
        (
            "SST-2/dev.tsv",
            cols("sentence", None, "label", true),
            872,
            Some(2),
        ),
        ("CoLA/dev.tsv", cols("3", None, "1", false), 1043, Some(2)),
        (
            "MRPC/dev.tsv",
            cols("#1 String", Some("#2 String"), "Quality", true),
            408,
            Some(2),
        ),
        (
            "RTE/dev.tsv",
            cols("sentence1", Some("sentence2"), "label", true),
            277,
            Some(2),
        ),
        (
            "STS-B/dev.tsv",
            cols("sentence1", Some("sentence2"), "score", true),
            1500,
            None,
        ),
    ];
    for (file, columns, rows, classes) in cases {
        let path = glue.join(file);
        let examples = read_classification(&path, &columns, true).expect(file);
        assert_eq!(examples.len(), rows, "{file}");
        let pairs = examples.iter().filter(|e| e.text_pair.is_some()).count();
        assert_eq!(pairs > 0, columns.text_pair != "text_pair", "{file}");
        match classes {
            Some(n) => {
                let labels = LabelSet::from_examples(&examples);
                assert_eq!(labels.num_labels(), n, "{file}: {labels:?}");
                for e in &examples {
                    labels.target(e, &path).expect("every label known");
                }
            }
            None => {
                for e in &examples {
                    LabelSet::Regression
                        .target(e, &path)
                        .expect("every score parses");
                }
            }
        }
    }
}

#[test]
fn wnut17_conll_parses_and_aligns() {
    let Some(data) = shared() else { return };
    let tokenizer = minilm();
    for (file, sentences) in [
        ("wnut17train.conll", 3394),
        ("emerging.dev.conll", 1009),
        ("emerging.test.annotated", 1287),
    ] {
        let s = read_token_classification(data.join("ner/wnut17").join(file)).expect(file);
        assert_eq!(s.len(), sentences, "{file}");
        let tags = tag_set(&s);
        assert_eq!(tags.len(), 13, "{file}: O + B/I of six types: {tags:?}");
        for sentence in s.iter().take(300) {
            let f = encode_sentence(&tokenizer, sentence, &tags).expect("encode");
            // One label per word (its first piece), the rest ignored.
            let labelled = f.labels.iter().filter(|&&l| l >= 0).count();
            assert_eq!(
                labelled,
                sentence
                    .tokens
                    .iter()
                    .filter(|w| !tokenizer.tokenize(w).expect("t").is_empty())
                    .count()
            );
        }
    }
}

fn normalize(s: &str) -> String {
    let lower = s.to_lowercase();
    let no_punct: String = lower
        .chars()
        .filter(|c| !c.is_ascii_punctuation())
        .collect();
    no_punct
        .split_whitespace()
        .filter(|w| !matches!(*w, "a" | "an" | "the"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn squad_spans_round_trip_on_the_official_dev_sets() {
    let Some(data) = shared() else { return };
    let tokenizer = minilm().with_windows(384, 128).expect("windows");
    // (file, questions, unanswerable, answers recovered after SQuAD normalisation, of them
    // character-exact), measured with all-MiniLM-L6-v2, 384 tokens, stride 128.
    for (file, questions, impossible, want_recovered, want_exact) in [
        ("dev-v1.1.json", 10570, 0, 10538, 10538),
        ("dev-v2.0.cs224n-half.json", 6078, 3168, 2908, 2908),
    ] {
        let examples = read_squad(data.join("squad").join(file)).expect(file);
        assert_eq!(examples.len(), questions, "{file}");
        assert_eq!(
            examples.iter().filter(|e| e.is_impossible).count(),
            impossible,
            "{file}"
        );
        let (mut answerable, mut recovered, mut exact) = (0usize, 0usize, 0usize);
        for (i, ex) in examples.iter().enumerate() {
            let features = encode_example(&tokenizer, ex, i).expect("encode");
            assert!(features.iter().all(|f| f.encoding.len() <= 384));
            if ex.is_impossible {
                assert!(features.iter().all(|f| f.start_position == 0));
                continue;
            }
            answerable += 1;
            let gold = &ex.answers[0].0;
            let spans: Vec<String> = features
                .iter()
                .filter(|f| f.start_position > 0)
                .filter_map(|f| {
                    span_text(
                        &ex.context,
                        &f.context_offsets,
                        f.start_position,
                        f.end_position,
                    )
                })
                .collect();
            if spans.iter().any(|s| normalize(s) == normalize(gold)) {
                recovered += 1;
            }
            if spans.iter().any(|s| s == gold) {
                exact += 1;
            }
        }
        eprintln!(
            "{file}: {recovered}/{answerable} answers recovered after SQuAD normalisation, {exact} character-exact"
        );
        // Answers that end inside a word piece ("1990" of "1990s") cannot be cut out exactly.
        assert_eq!(
            (answerable, recovered, exact),
            (questions - impossible, want_recovered, want_exact),
            "{file}: (answerable, recovered, character-exact)"
        );
    }
}

#[test]
fn csqa_and_copa_parse() {
    let Some(data) = shared() else { return };
    let csqa =
        read_multiple_choice(data.join("multiple_choice/csqa/dev_rand_split.hf-format.jsonl"))
            .expect("csqa");
    assert_eq!(csqa.len(), 1221);
    assert!(
        csqa.iter()
            .all(|e| e.choices.len() == 5 && e.label.is_some())
    );
    let copa = read_multiple_choice(data.join("multiple_choice/copa/balanced-copa-dev-all.xml"))
        .expect("copa");
    assert_eq!(copa.len(), 1000);
    assert!(
        copa.iter()
            .all(|e| e.choices.len() == 2 && e.label.is_some())
    );
    // most-plausible-alternative="1" in 506 of the 1,000 items.
    let first = copa.iter().filter(|e| e.label == Some(0)).count();
    assert_eq!(first, 506, "items whose first alternative is right");
}
