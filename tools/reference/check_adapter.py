#!/usr/bin/env python3
"""Checks that a LoRA adapter written by lapidary loads in PEFT and gives lapidary's logits.

    LAPIDARY_KEEP_ADAPTER=/tmp/adapter cargo test --test integration round_trip
    .venv/bin/python tools/reference/check_adapter.py /tmp/adapter

The directory holds adapter_model.safetensors, adapter_config.json and out.safetensors (lapidary's
logits for the fixture case two_rows_one_image_each). Exits non-zero on a mismatch.
"""

import os
import sys

import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import Gemma3ForConditionalGeneration

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "fixtures", "tiny-gemma3")


def main(adapter_dir):
    base = Gemma3ForConditionalGeneration.from_pretrained(os.path.join(ROOT, "model")).eval()
    model = PeftModel.from_pretrained(base, adapter_dir).eval()
    case = load_file(os.path.join(ROOT, "cases", "two_rows_one_image_each.safetensors"))
    batch = {k: case[k] for k in ["input_ids", "attention_mask", "token_type_ids", "pixel_values"]}
    with torch.no_grad():
        logits = model(**batch).logits.float()
    ours = load_file(os.path.join(adapter_dir, "out.safetensors"))["logits"]
    err = ((logits - ours).abs().max() / ours.abs().max()).item()
    print(f"PEFT logits vs lapidary's with the lapidary-written adapter: max rel err {err:.2e}")
    if err > 1e-4:
        sys.exit(1)


if __name__ == "__main__":
    main(sys.argv[1])
