#!/usr/bin/env python3
"""A larger RANDOM Gemma 3 VLM for memory measurements of `lapidary train --base-format ...`:
the bundled tiny model's vision tower, tokenizer and processor with a decoder of 8 layers,
hidden 1024, MLP 4096 (126M linear weights: 504 MB in f32). Written to the directory given
(not committed).

    .venv/bin/python tools/reference/make_memory_model.py /tmp/mem-model
"""
import os
import shutil
import sys

import torch
from transformers import Gemma3Config, Gemma3ForConditionalGeneration

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "assets", "tiny-vlm")


def main():
    out = sys.argv[1]
    cfg = Gemma3Config.from_pretrained(SRC)
    t = cfg.text_config
    t.hidden_size, t.intermediate_size, t.num_hidden_layers = 1024, 4096, 8
    t.num_attention_heads, t.num_key_value_heads, t.head_dim, t.query_pre_attn_scalar = 8, 4, 128, 128
    t.layer_types = ["sliding_attention"] * 5 + ["full_attention"] + ["sliding_attention"] * 2
    torch.manual_seed(0)
    model = Gemma3ForConditionalGeneration(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, p[0].numel() ** -0.5)
    model.save_pretrained(out)
    for f in os.listdir(SRC):
        if f.startswith(("tokenizer", "processor", "chat_template")):
            shutil.copy(os.path.join(SRC, f), out)
    print(out, sum(p.numel() for p in model.parameters()), "parameters")


if __name__ == "__main__":
    main()
