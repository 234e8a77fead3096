//! A `pytorch_model.bin` is a pickle, which Python runs as a program. The fixtures in
//! `tests/fixtures/pickle` (`scripts/make_pickle_fixtures.py`) are torch.save's zip layout; the
//! malicious one holds, between valid tensors, an entry that Python's pickle turns into
//! `exec(code)` through the REDUCE opcode (the script checks that it does). Our loader, a
//! pure-Rust unpickler, must refuse it without running anything.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bert_model::checkpoint::read_checkpoint;
use bert_model::{BertModel, LoadOptions, load_pretrained};
use burn::backend::Flex;
use burn::tensor::TensorData;
use burn_store::TensorSnapshot;

type B = Flex;

/// Written by the payload, in the temporary directory, if it ever runs.
const MARKER_NAME: &str = "bert-rs-pickle-payload-ran";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/pickle")
        .join(name)
        .join("pytorch_model.bin")
}

const VALID: [&str; 3] = [
    "embeddings.LayerNorm.bias",
    "embeddings.position_ids",
    "embeddings.word_embeddings.weight",
];

/// The three valid tensors of both fixtures, with their values.
fn assert_valid_tensors(tensors: &BTreeMap<String, TensorSnapshot>) {
    let keys: Vec<&str> = tensors.keys().map(String::as_str).collect();
    assert_eq!(keys, VALID);
    let data = |key: &str| tensors[key].to_data().expect("tensor data");
    data("embeddings.word_embeddings.weight").assert_eq(
        &TensorData::new(vec![-1.0f32, -0.5, 0.0, 0.5, 1.0, 1.5], [2, 3]),
        true,
    );
    // A view at offset 6 of the same storage.
    data("embeddings.LayerNorm.bias").assert_eq(&TensorData::new(vec![2.0f32, 2.5], [2]), true);
    data("embeddings.position_ids").assert_eq(&TensorData::new(vec![0i64, 1, 2, 3], [1, 4]), true);
}

#[test]
fn the_clean_twin_of_the_malicious_checkpoint_loads() {
    // Same zip layout and tensors without the payload: the hand-built archive is one our
    // loader reads, so what it does with the malicious one is about the payload.
    assert_valid_tensors(&read_checkpoint(&fixture("clean")).expect("a torch-zip checkpoint"));
}

#[test]
fn a_reduce_payload_beside_valid_tensors_is_refused_and_never_runs() {
    let malicious = fixture("malicious");
    let bytes = std::fs::read(&malicious).expect("fixture");
    assert!(bytes.starts_with(b"PK\x03\x04"), "a zip archive");
    // Entries are stored uncompressed: the pickle's GLOBAL, its argument and the REDUCE that
    // calls it are in the file as they are.
    let call = b"cbuiltins\nexec\n";
    let at = bytes
        .windows(call.len())
        .position(|w| w == call)
        .expect("the fixture carries the exec payload");
    let reduce = bytes[at..]
        .iter()
        .position(|&b| b == b'R')
        .expect("REDUCE follows the global");
    assert!(
        String::from_utf8_lossy(&bytes[at..at + reduce]).contains(MARKER_NAME),
        "the call's argument writes the marker"
    );

    let marker = std::env::temp_dir().join(MARKER_NAME);
    if marker.exists() {
        std::fs::remove_file(&marker).expect("remove a marker left by an earlier run");
    }
    match read_checkpoint(&malicious) {
        // burn-store 0.21's unpickler reaches REDUCE with the callable builtins.exec and refuses
        // to call it: the whole file is rejected, the tensors before the payload included.
        Err(err) => {
            let message = err.to_string();
            assert!(message.contains("builtins.exec"), "{message}");
            assert!(message.contains("pytorch_model.bin"), "{message}");
        }
        // An unpickler may instead drop what is not a tensor: then only the valid ones.
        Ok(tensors) => assert_valid_tensors(&tensors),
    }

    // The same file as a model directory's weights, as `load_pretrained` reads it.
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(&malicious, dir.path().join("pytorch_model.bin")).expect("copy");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/tiny-bert/BertModel/config.json"),
        dir.path().join("config.json"),
    )
    .expect("config");
    for options in [LoadOptions::strict(), LoadOptions::partial()] {
        // Either refused, or three tensors that do not fit the model's shapes.
        let err = load_pretrained::<B, BertModel<B>>(dir.path(), options, &Default::default())
            .expect_err("no model from this file");
        assert!(err.to_string().contains("pytorch_model.bin"), "{err}");
    }
    assert!(!marker.exists(), "the pickle's code ran");
}
