//! Token ids, tokens, offsets and word ids identical to the Python tokenizer of
//! all-MiniLM-L6-v2 (fixtures from `scripts/make_fixtures.py`), on accents, CJK, emoji,
//! control characters, over-long words and truncation.

use std::path::{Path, PathBuf};

use bert_data::{BertTokenizer, Truncation};
use serde::Deserialize;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn minilm_dir() -> PathBuf {
    let dir = std::env::var_os("BERT_MINILM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".cache/models/all-MiniLM-L6-v2"));
    assert!(
        dir.join("tokenizer.json").is_file(),
        "all-MiniLM-L6-v2 not found in {}: run scripts/fetch_models.sh",
        dir.display()
    );
    dir
}

#[derive(Deserialize)]
struct Case {
    text: String,
    text_pair: Option<String>,
    max_length: Option<usize>,
    input_ids: Vec<u32>,
    token_type_ids: Vec<u32>,
    tokens: Vec<String>,
    offsets: Vec<(usize, usize)>,
    word_ids: Vec<Option<u32>>,
}

#[test]
fn ids_match_the_python_tokenizer() {
    let path = root().join("tests/fixtures/minilm/tokenizer_cases.json");
    let cases: Vec<Case> =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("fixture")).expect("json");
    assert!(cases.len() >= 20);
    let tokenizer = BertTokenizer::from_dir(minilm_dir()).expect("tokenizer");
    for case in &cases {
        let tok = match case.max_length {
            Some(n) => tokenizer
                .with_truncation(n, Truncation::LongestFirst)
                .expect("truncation"),
            None => tokenizer.clone(),
        };
        let e = tok
            .encode(&case.text, case.text_pair.as_deref())
            .expect("encode");
        let what = format!(
            "{:?} / {:?} / {:?}",
            case.text, case.text_pair, case.max_length
        );
        assert_eq!(e.input_ids, case.input_ids, "ids of {what}");
        assert_eq!(e.token_type_ids, case.token_type_ids, "types of {what}");
        assert_eq!(e.tokens, case.tokens, "tokens of {what}");
        assert_eq!(e.offsets, case.offsets, "offsets of {what}");
        assert_eq!(e.word_ids, case.word_ids, "word ids of {what}");
    }
}

#[test]
fn vocab_txt_pipeline_matches_tokenizer_json() {
    // The same model loaded from vocab.txt + tokenizer_config.json must tokenize identically.
    let dir = minilm_dir();
    let tmp = tempfile::tempdir().expect("tempdir");
    for f in ["vocab.txt", "tokenizer_config.json"] {
        std::fs::copy(dir.join(f), tmp.path().join(f)).expect("copy");
    }
    let from_json = BertTokenizer::from_dir(&dir).expect("json");
    let from_vocab = BertTokenizer::from_dir(tmp.path()).expect("vocab");
    for text in [
        "Héllo wörld! Ça va? Crème brûlée",
        "北京是中国的首都。",
        "emoji 🍕 and [MASK] token",
        "antidisestablishmentarianism",
    ] {
        assert_eq!(
            from_json.encode(text, Some("pair")).expect("a"),
            from_vocab.encode(text, Some("pair")).expect("b"),
            "{text}"
        );
    }
}
