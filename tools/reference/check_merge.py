#!/usr/bin/env python3
"""Loads a checkpoint written by `lapidary merge` (the fixture adapter folded into the tiny
fixture model) with transformers and compares its logits with PEFT's adapter logits.

    lapidary merge --model tests/fixtures/tiny-gemma3/model --adapter tests/fixtures/tiny-gemma3/adapter --out /tmp/merged
    .venv/bin/python tools/reference/check_merge.py /tmp/merged
"""
import sys

import torch
from safetensors.torch import load_file
from transformers import Gemma3ForConditionalGeneration
import os
root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "fixtures", "tiny-gemma3")
case = load_file(f"{root}/cases/adapter_two_rows_one_image_each.safetensors")
inputs = {k: case[k] for k in ["input_ids", "attention_mask", "token_type_ids", "pixel_values"]}
merged = Gemma3ForConditionalGeneration.from_pretrained(sys.argv[1], dtype=torch.float32).eval()
with torch.no_grad():
    got = merged(**inputs).logits
want = case["logits"]
print("transformers loaded the merged checkpoint; max |logit diff| / max |logit| vs PEFT:",
      ((got - want).abs().max() / want.abs().max()).item())
