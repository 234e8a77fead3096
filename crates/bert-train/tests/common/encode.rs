//! Reading safetensors outputs and checking `bert encode` on the tiny random fixtures against
//! transformers (shared by `cli.rs`, on the CPU, and `wgpu.rs`).
#![allow(dead_code)]

use std::path::Path;

use super::common::*;

pub struct Tensors(Vec<u8>);

impl Tensors {
    pub fn open(path: &Path) -> Self {
        Self(std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
    }

    pub fn get(&self, name: &str) -> (Vec<usize>, Vec<f64>) {
        let st = safetensors::SafeTensors::deserialize(&self.0).expect("safetensors");
        let t = st
            .tensor(name)
            .unwrap_or_else(|_| panic!("no tensor {name}"));
        let values = match t.dtype() {
            safetensors::Dtype::F32 => t
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
                .collect(),
            safetensors::Dtype::I64 => t
                .data()
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().expect("8")) as f64)
                .collect(),
            other => panic!("{name}: dtype {other:?}"),
        };
        (t.shape().to_vec(), values)
    }

    pub fn has(&self, name: &str) -> bool {
        let st = safetensors::SafeTensors::deserialize(&self.0).expect("safetensors");
        st.tensor(name).is_ok()
    }
}

/// Max |a - b| over the entries where `keep` is true (all when `None`).
pub fn max_diff(a: &[f64], b: &[f64], keep: Option<&[bool]>) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .enumerate()
        .filter(|(i, _)| keep.is_none_or(|k| k[*i]))
        .map(|(_, (x, y))| (x - y).abs())
        .fold(0.0, f64::max)
}

/// Writes the reference inputs of a tiny-bert fixture as pre-tokenized JSONL (padding dropped).
pub fn pretokenized_inputs(reference: &Tensors, path: &Path) {
    let (shape, ids) = reference.get("input_ids");
    let (_, types) = reference.get("token_type_ids");
    let (_, mask) = reference.get("attention_mask");
    let seq = shape[1];
    let mut text = String::new();
    for row in 0..shape[0] {
        let r = row * seq..(row + 1) * seq;
        let n = mask[r.clone()].iter().filter(|&&m| m == 1.0).count();
        let take = |v: &[f64]| {
            v[r.start..r.start + n]
                .iter()
                .map(|&x| x as i64)
                .collect::<Vec<_>>()
        };
        text.push_str(
            &serde_json::json!({
                "input_ids": take(&ids),
                "token_type_ids": take(&types),
                "attention_mask": take(&mask),
            })
            .to_string(),
        );
        text.push('\n');
    }
    std::fs::write(path, text).expect("write inputs");
}

/// `bert encode --backend <backend>` on every head of the tiny random BERT against
/// transformers' outputs (heads, pooler and every hidden state within 1e-4), each command run
/// by `bert` (the binary, or the library in-process). An `Err` is the command's error when it
/// fails (e.g. no wgpu adapter).
pub fn encode_every_head_matches_transformers_on(
    backend: &str,
    bert: impl Fn(&[&str]) -> Result<(), String>,
) -> Result<(), String> {
    let dir = tempfile::tempdir().expect("tempdir");
    for (arch, heads) in [
        ("BertModel", &["pooler_output"][..]),
        (
            "BertForPreTraining",
            &["mlm_logits", "seq_relationship_logits"][..],
        ),
        ("BertForMaskedLM", &["mlm_logits"][..]),
        ("BertForSequenceClassification", &["seqcls_logits"][..]),
        ("BertForTokenClassification", &["tokcls_logits"][..]),
        (
            "BertForQuestionAnswering",
            &["qa_start_logits", "qa_end_logits"][..],
        ),
    ] {
        let fixture = root().join("tests/fixtures/tiny-bert").join(arch);
        let reference = Tensors::open(&fixture.join("reference.safetensors"));
        let input = dir.path().join(format!("{arch}.jsonl"));
        let out = dir.path().join(format!("{arch}.safetensors"));
        pretokenized_inputs(&reference, &input);
        let out_arg = out.to_str().expect("utf8").to_string();
        bert(&[
            "encode",
            "--backend",
            backend,
            "--model",
            fixture.to_str().expect("utf8"),
            "--input",
            input.to_str().expect("utf8"),
            "--output",
            &out_arg,
            "--hidden-states",
            "--batch-size",
            "2",
        ])?;
        let ours = Tensors::open(&out);
        assert_eq!(
            ours.get("input_ids"),
            reference.get("input_ids"),
            "{arch}: padding"
        );
        let (_, mask) = reference.get("attention_mask");
        let real_positions = |width: usize| -> Vec<bool> {
            mask.iter()
                .flat_map(|&m| std::iter::repeat_n(m == 1.0, width))
                .collect()
        };
        for &name in heads {
            let (shape, values) = ours.get(name);
            let (rshape, expected) = reference.get(name);
            assert_eq!(shape, rshape, "{arch}: {name} shape");
            // Per-token outputs are compared on real tokens (HF computes padding positions too,
            // with the same values, but they carry no meaning).
            let keep = (shape.len() == 3).then(|| real_positions(shape[2]));
            let d = max_diff(&values, &expected, keep.as_deref());
            assert!(d < 1e-4, "{backend}, {arch}: {name} differs by {d}");
        }
        let (shape, states) = ours.get("hidden_states");
        let (rshape, expected) = reference.get("hidden_states");
        assert_eq!(shape, rshape, "{arch}: hidden_states shape");
        let d = max_diff(&states, &expected, None);
        assert!(d < 1e-4, "{backend}, {arch}: hidden_states differ by {d}");
    }
    Ok(())
}
