#!/usr/bin/env python3
"""A PEFT LoRA adapter made with `target_modules="all-linear"` (what TRL, Unsloth and most
recipes pass) for each tiny Gemma 4 fixture, and PEFT's logits, loss and adapter gradients with
it on the fixture's two-image case. On Gemma 4, PEFT's `all-linear` also adapts the vision tower's
patch projection (`patch_embedder.input_proj`), the embedder's projection into the text width
(`embed_vision.embedding_projection`) and, on the E-series, the per-layer-input projection
(`per_layer_model_projection`), besides every layer's linears (the clipped ones through their
inner `.linear`). Writes under tests/fixtures/tiny-gemma4-{dense,e}/:

  adapter-all-linear/   adapter_config.json + adapter_model.safetensors (r 4, alpha 8, random A, B)
  cases/adapter_all_linear_two_images_and_padded_text_row.safetensors
                        the case's inputs, logits, loss and grad.<adapter key>

Run after make_gemma4_fixtures.py (it reads the committed model and case):
    .venv/bin/python tools/reference/make_gemma4_all_linear_adapter.py
"""

import os
import sys

import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import Gemma4ForConditionalGeneration

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "..", "tests", "fixtures")
CASE = "two_images_and_padded_text_row"


def make(kind):
    root = os.path.join(FIXTURES, f"tiny-gemma4-{kind}")
    model = Gemma4ForConditionalGeneration.from_pretrained(os.path.join(root, "model"), dtype=torch.float32)
    model.config._attn_implementation = "eager"
    batch = load_file(os.path.join(root, "cases", f"{CASE}.safetensors"))
    inputs = {k: batch[k] for k in ["input_ids", "attention_mask", "mm_token_type_ids", "labels", "pixel_values",
                                    "image_position_ids"]}
    gen = torch.Generator().manual_seed(123)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear"))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    adapter_dir = os.path.join(root, "adapter-all-linear")
    peft_model.save_pretrained(adapter_dir)
    os.remove(os.path.join(adapter_dir, "README.md"))  # PEFT's model card template
    peft_model.eval()
    out = peft_model(**inputs)
    out.loss.backward()
    res = {"logits": out.logits.detach().float().contiguous(), "loss": out.loss.detach().float().reshape(1)}
    for name, p in peft_model.named_parameters():
        if p.grad is not None:
            res["grad." + name.replace(".default", "")] = p.grad.detach().float().contiguous()
    tensors = {k: v.contiguous() for k, v in inputs.items()}
    tensors["num_soft_tokens_per_image"] = batch["num_soft_tokens_per_image"]
    tensors.update(res)
    save_file(tensors, os.path.join(root, "cases", f"adapter_all_linear_{CASE}.safetensors"))
    keys = list(load_file(os.path.join(adapter_dir, "adapter_model.safetensors")).keys())
    missing = [k for k in keys if "grad." + k not in res]
    if missing:
        sys.exit(f"adapter tensors without a gradient: {missing[:3]}")
    outside = sorted({k.split(".lora_")[0] for k in keys if ".layers." not in k})
    print(f"{kind}: loss {out.loss.item():.6f}, {len(keys)} adapter tensors; outside the layers: {outside}")


if __name__ == "__main__":
    for kind in ["dense", "e"]:
        make(kind)
