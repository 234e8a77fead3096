#!/usr/bin/env python3
"""Check that `bert convert` output loads in transformers with no missing keys and gives the
same outputs as the original checkpoint (needs torch + transformers; not run in CI).

Usage: python3 scripts/check_export.py ORIGINAL_DIR CONVERTED_DIR
"""
import sys

import torch
import transformers
from transformers import AutoConfig, AutoModel

orig_dir, conv_dir = sys.argv[1], sys.argv[2]
config = AutoConfig.from_pretrained(conv_dir)
arch = (config.architectures or ["BertModel"])[0]
cls = getattr(transformers, arch)
a = cls.from_pretrained(orig_dir).eval()
b, info = cls.from_pretrained(conv_dir, output_loading_info=True)
b.eval()
print(arch, "loading info:", {k: v for k, v in info.items() if v})
assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
# AutoModel (the bare encoder) must miss nothing that it does not also miss on the original
# (HF's own BertForMaskedLM/TokenClassification/QA checkpoints have no pooler).
_, base_info = AutoModel.from_pretrained(conv_dir, output_loading_info=True)
_, orig_base_info = AutoModel.from_pretrained(orig_dir, output_loading_info=True)
assert set(base_info["missing_keys"]) <= set(orig_base_info["missing_keys"]), base_info
ids = torch.tensor([[2, 11, 17, 23, 5, 3], [2, 33, 8, 3, 0, 0]])
mask = (ids != 0).long()
if arch == "BertForMultipleChoice":
    ids, mask = ids[None], mask[None]  # one example with two choices
with torch.no_grad():
    oa = a(input_ids=ids, attention_mask=mask)
    ob = b(input_ids=ids, attention_mask=mask)
for key in oa.keys():
    if torch.is_tensor(oa[key]):
        diff = (oa[key] - ob[key]).abs().max().item()
        print(f"  {key}: max abs diff {diff}")
        assert diff == 0.0, key
sd_a, sd_b = a.state_dict(), b.state_dict()
assert sd_a.keys() == sd_b.keys()
assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a), "weights differ"
print("OK: identical weights and outputs")
