use super::*;
use crate::pretraining::instances::Documents;

const VOCAB: &[&str] = &[
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "whale", "sea", "ship", "call", "me",
    "ishmael", ".", ",", "a", "white", "##s", "sail", "captain",
];

fn tokenizer(vocab: &[&str]) -> (tempfile::TempDir, BertTokenizer) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("vocab.txt"), vocab.join("\n")).expect("vocab");
    let tok = BertTokenizer::from_dir(dir.path()).expect("tokenizer");
    (dir, tok)
}

fn corpus(dir: &Path) -> Vec<String> {
    let a = dir.join("a.txt");
    let b = dir.join("b.txt");
    std::fs::write(
        &a,
        "Call me Ishmael.\nThe whale, the sea.\n\nA white whale.\n\n\nThe ships sail.\n",
    )
    .expect("a");
    std::fs::write(&b, "The captain.\n\u{1}\nThe sea.\n").expect("b");
    vec![a.display().to_string(), b.display().to_string()]
}

#[test]
fn prepared_shards_round_trip_and_rerun_incrementally() {
    let (_v, tok) = tokenizer(VOCAB);
    let data = tempfile::tempdir().expect("tempdir");
    let inputs = corpus(data.path());
    let out = data.path().join("prepared");
    let options = PrepareOptions {
        inputs: inputs.clone(),
        output: out.clone(),
        chunk_lines: 2,
        progress: false,
    };
    let report = prepare(&options, &tok).expect("prepare");
    assert_eq!((report.written, report.reused, report.documents), (2, 0, 4));
    let corpus = PreparedCorpus::open(&out, Some(&tok)).expect("open");
    let files: Vec<PathBuf> = inputs.iter().map(PathBuf::from).collect();
    let expected = read_documents(&files, &tok).expect("read");
    assert_eq!(corpus.num_documents(), expected.len());
    for (i, doc) in expected.iter().enumerate() {
        let got: Vec<Vec<u32>> = corpus.sentences(i).iter().map(|s| s.to_vec()).collect();
        assert_eq!(&got, doc, "document {i}");
    }
    // [CLS] call me ishmael . [SEP]: the first sentence.
    assert_eq!(corpus.sentences(0)[0], &[9, 10, 11, 12]);
    // A second run changes nothing; touching one file re-tokenizes only that shard.
    let again = prepare(&options, &tok).expect("rerun");
    assert_eq!((again.written, again.reused), (0, 2));
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(&inputs[1], "The whale.\n").expect("rewrite");
    let third = prepare(&options, &tok).expect("incremental");
    assert_eq!((third.written, third.reused, third.documents), (1, 1, 4));
    let corpus = PreparedCorpus::open(&out, Some(&tok)).expect("reopen");
    assert_eq!(corpus.sentences(3), vec![&[5u32, 6, 12][..]]);
}

#[test]
fn another_tokenizer_is_refused() {
    let (_v, tok) = tokenizer(VOCAB);
    let data = tempfile::tempdir().expect("tempdir");
    let out = data.path().join("prepared");
    let options = PrepareOptions {
        inputs: corpus(data.path()),
        output: out.clone(),
        chunk_lines: 100,
        progress: false,
    };
    prepare(&options, &tok).expect("prepare");
    let mut other_vocab = VOCAB.to_vec();
    other_vocab.push("extra");
    let (_w, other) = tokenizer(&other_vocab);
    let err = PreparedCorpus::open(&out, Some(&other)).expect_err("other tokenizer");
    assert!(err.to_string().contains("another tokenizer"), "{err}");
    let err = prepare(&options, &other).expect_err("other tokenizer");
    assert!(err.to_string().contains("another tokenizer"), "{err}");
}

#[test]
fn empty_corpus_and_missing_inputs_are_errors() {
    let (_v, tok) = tokenizer(VOCAB);
    let data = tempfile::tempdir().expect("tempdir");
    let empty = data.path().join("empty.txt");
    std::fs::write(&empty, "\n\n  \n").expect("write");
    let options = PrepareOptions {
        inputs: vec![empty.display().to_string()],
        output: data.path().join("p"),
        chunk_lines: 10,
        progress: false,
    };
    let err = prepare(&options, &tok).expect_err("empty");
    assert!(err.to_string().contains("empty"), "{err}");
    let err = expand_inputs(&[format!("{}/*.nope", data.path().display())]).expect_err("glob");
    assert!(err.to_string().contains("matches no file"), "{err}");
    let err = expand_inputs(&["/no/such/file.txt".into()]).expect_err("missing");
    assert!(err.to_string().contains("does not exist"), "{err}");
    let bad = data.path().join("bad.txt");
    std::fs::write(&bad, b"fine\n\xff\xfe\n").expect("write");
    let options = PrepareOptions {
        inputs: vec![bad.display().to_string()],
        ..options
    };
    let err = prepare(&options, &tok).expect_err("not utf-8");
    assert!(err.to_string().contains("bad.txt:2"), "{err}");
}

#[test]
fn a_truncated_shard_is_detected() {
    let (_v, tok) = tokenizer(VOCAB);
    let data = tempfile::tempdir().expect("tempdir");
    let out = data.path().join("prepared");
    let options = PrepareOptions {
        inputs: corpus(data.path()),
        output: out.clone(),
        chunk_lines: 100,
        progress: false,
    };
    prepare(&options, &tok).expect("prepare");
    let tokens = out.join("00000-a.tokens");
    let bytes = std::fs::read(&tokens).expect("read");
    std::fs::write(&tokens, &bytes[..bytes.len() - 4]).expect("truncate");
    let err = PreparedCorpus::open(&out, Some(&tok)).expect_err("corrupt");
    assert!(err.to_string().contains("00000-a.tokens"), "{err}");
}

#[test]
fn garbage_boundaries_of_the_right_size_are_errors_naming_the_file() {
    let (_v, tok) = tokenizer(VOCAB);
    let data = tempfile::tempdir().expect("tempdir");
    let out = data.path().join("prepared");
    let options = PrepareOptions {
        inputs: corpus(data.path()),
        output: out.clone(),
        chunk_lines: 100,
        progress: false,
    };
    prepare(&options, &tok).expect("prepare");
    let read = |ext: &str| -> Vec<u64> {
        std::fs::read(out.join(format!("00000-a.{ext}")))
            .expect("read")
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect()
    };
    let (sentences, documents) = (read("sentences"), read("documents"));
    // a.txt: 4 sentences in 3 documents.
    assert_eq!((sentences.len(), documents.len()), (4, 3));
    let n = sentences.len() as u64;
    let mut swapped = sentences.clone();
    swapped.swap(0, 1);
    let cases: Vec<(&str, Vec<u64>, &str)> = vec![
        (
            "documents",
            vec![u64::MAX, documents[1], documents[2]],
            "entry 0",
        ),
        ("documents", vec![documents[0], documents[0], n], "entry 1"),
        (
            "documents",
            vec![documents[0], documents[1], n - 1],
            "entry 2",
        ),
        (
            "documents",
            vec![documents[0], documents[1], n + 1],
            "entry 2",
        ),
        (
            "sentences",
            vec![0, sentences[1], sentences[2], sentences[3]],
            "entry 0",
        ),
        ("sentences", swapped, "entry 1"),
        (
            "sentences",
            vec![sentences[0], 1 << 40, sentences[2], sentences[3]],
            "entry 1",
        ),
        (
            "sentences",
            vec![sentences[0], sentences[1], sentences[2], 1],
            "entry 3",
        ),
        (
            "sentences",
            vec![sentences[0], sentences[1], sentences[2], sentences[2] + 1],
            "last entry",
        ),
    ];
    for (ext, entries, what) in cases {
        let path = out.join(format!("00000-a.{ext}"));
        let original = std::fs::read(&path).expect("read");
        let bytes: Vec<u8> = entries.iter().flat_map(|e| e.to_le_bytes()).collect();
        assert_eq!(bytes.len(), original.len(), "the size stays right");
        std::fs::write(&path, &bytes).expect("overwrite");
        let err = PreparedCorpus::open(&out, Some(&tok))
            .expect_err(&format!("{ext} {entries:?} must be refused"));
        let DataError::CorruptShard { path: named, .. } = &err else {
            panic!("{ext} {entries:?}: {err}");
        };
        assert_eq!(named, &path, "{err}");
        assert!(err.to_string().contains(what), "{ext} {entries:?}: {err}");
        std::fs::write(&path, &original).expect("restore");
    }
    let corpus = PreparedCorpus::open(&out, Some(&tok)).expect("restored");
    assert_eq!(corpus.num_documents(), 4);
}
