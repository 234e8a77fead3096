//! Helpers shared by the CLI integration tests: paths, running the `bert` binary.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// all-MiniLM-L6-v2 (`BERT_MINILM_DIR`, else `.cache/models`), fetched by scripts/fetch_models.sh.
pub fn minilm_dir() -> PathBuf {
    let dir = std::env::var_os("BERT_MINILM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".cache/models/all-MiniLM-L6-v2"));
    assert!(
        dir.join("model.safetensors").is_file(),
        "all-MiniLM-L6-v2 not found in {}: run scripts/fetch_models.sh",
        dir.display()
    );
    dir
}

/// Runs the `bert` binary.
pub fn bert(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bert"))
        .args(args)
        .output()
        .expect("run bert")
}

/// Runs `bert`, asserts success, returns stdout + stderr.
pub fn ok(args: &[&str]) -> String {
    let out = bert(args);
    assert!(
        out.status.success(),
        "bert {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// Runs `bert`, asserts a failure with exactly one non-empty stderr line containing `needle`.
pub fn fails_in_one_line(args: &[&str], needle: &str) {
    let out = bert(args);
    assert!(!out.status.success(), "bert {args:?} should fail");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one-line error expected, got: {stderr}");
    assert!(lines[0].contains(needle), "{needle:?} not in: {stderr}");
}

/// All f32 tensors of a safetensors file.
pub fn read_tensors(path: &Path) -> BTreeMap<String, Vec<f32>> {
    let bytes = std::fs::read(path).expect("weights");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            let v = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            (name, v)
        })
        .collect()
}
