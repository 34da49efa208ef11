#!/usr/bin/env python3
"""A PEFT adapter with the projector in `modules_to_save`, for lapidary's loading test.

Writes tests/fixtures/tiny-gemma3/adapter-projector/ (LoRA r 2 on q_proj and fc1 with random A
and B, the multimodal projector saved whole with random values) and
cases/adapter_projector.safetensors: PEFT's logits and loss on the inputs of
cases/two_rows_one_image_each.safetensors.

    .venv/bin/python tools/reference/make_adapter_projector.py        # make the fixture
    .venv/bin/python tools/reference/make_adapter_projector.py DIR    # check an adapter written
                                                                      # by lapidary: PEFT loads it
CI never runs this; the outputs are committed.
"""
import os
import sys

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import Gemma3ForConditionalGeneration

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "fixtures", "tiny-gemma3")


def inputs():
    case = load_file(os.path.join(ROOT, "cases", "two_rows_one_image_each.safetensors"))
    return {k: case[k] for k in ["input_ids", "attention_mask", "token_type_ids", "pixel_values", "labels"]}


def main():
    base = Gemma3ForConditionalGeneration.from_pretrained(os.path.join(ROOT, "model"), dtype=torch.float32).eval()
    if len(sys.argv) > 1:
        model = PeftModel.from_pretrained(base, sys.argv[1]).eval()
        with torch.no_grad():
            out = model(**inputs())
        print("PEFT loaded", sys.argv[1], "loss", out.loss.item())
        return
    cfg = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "fc1"], modules_to_save=["multi_modal_projector"])
    model = get_peft_model(base, cfg)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name or "modules_to_save" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    model.eval()
    out_dir = os.path.join(ROOT, "adapter-projector")
    model.save_pretrained(out_dir)
    with torch.no_grad():
        out = model(**inputs())
    save_file({"logits": out.logits.contiguous(), "loss": out.loss.reshape(1)},
              os.path.join(ROOT, "cases", "adapter_projector.safetensors"))
    print("wrote", out_dir, "loss", out.loss.item())


if __name__ == "__main__":
    main()
