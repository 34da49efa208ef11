#!/usr/bin/env python3
"""Reference fixtures for lapidary's parity tests, made with HF transformers (no hub access).

Builds a tiny RANDOM Gemma3ForConditionalGeneration from config objects, re-initializes every
weight to non-zero values (transformers zero-initializes the projector and the Gemma norms, which
would hide missing gradients), and writes under tests/fixtures/tiny-gemma3/:

  model/       config.json (new schema: rope_parameters, layer_types) + model.safetensors as
               transformers 5.24 saves it (vision_tower.*, language_model.model.*, ...)
  model-hub/   the same weights in the hub layout (vision_tower.vision_model.*) with an
               old-schema config.json (rope_theta, rope_local_base_freq, rope_scaling,
               sliding_window_pattern); checked here to give the same logits
  model-bf16/  the same weights stored in bf16
  cases/NAME.safetensors  inputs (input_ids, attention_mask, token_type_ids, labels as int64;
               pixel_values f32 when there are images), logits, loss, hidden states, and
               grad.<on-disk name> for every parameter plus grad.pixel_values (f32 model)
  adapter/     a PEFT LoRA adapter (r 4, alpha 8, every linear of both towers, random A and B)
  cases/adapter_two_rows_one_image_each.safetensors  logits, loss, grad.<adapter key> for
               every adapter tensor with the adapter applied, and after_adamw_step.<adapter key>:
               the adapter after one torch AdamW step (lr 1e-2, weight decay 0.01)
  manifest.json  versions, cases, and the bf16 model's loss per case

Run:  python -m venv .venv && .venv/bin/pip install torch==2.15.0 transformers==5.24.0 \
          peft==0.21.2 safetensors && .venv/bin/python tools/reference/make_fixtures.py
CI never runs this; the fixtures are committed.
"""

import copy
import json
import os
import shutil
import sys

import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3TextConfig, SiglipVisionConfig

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "fixtures", "tiny-gemma3")
IMAGE, BOI, EOI, PAD, BOS = 120, 121, 122, 0, 2
MM_TOKENS = 4


def build_config():
    vision = SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        image_size=32, patch_size=8, vision_use_head=False, layer_norm_eps=1e-6,
    )
    text = Gemma3TextConfig(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=6,
        query_pre_attn_scalar=16, max_position_embeddings=256, rms_norm_eps=1e-6,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"],
        rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
        },
        pad_token_id=PAD, bos_token_id=BOS, eos_token_id=1,
    )
    return Gemma3Config(
        text_config=text.to_dict(), vision_config=vision.to_dict(), mm_tokens_per_image=MM_TOKENS,
        image_token_index=IMAGE, boi_token_index=BOI, eoi_token_index=EOI,
    )


def reinit(model, gen):
    """Every parameter non-zero: weights ~ N(0, 1/fan_in), norms and biases ~ N(0, 0.1)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) / fan_in ** 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
        # The projector weight is [vision_hidden, text_hidden], used as x @ W.
        w = model.model.multi_modal_projector.mm_input_projection_weight
        w.copy_(torch.randn(w.shape, generator=gen) / w.shape[0] ** 0.5)


def disk_name(name):
    """In-memory parameter name -> the key transformers 5.24 writes to disk."""
    if name.startswith("model.language_model."):
        return "language_model.model." + name[len("model.language_model."):]
    if name.startswith("model."):
        return name[len("model."):]
    return name


def hub_name(disk):
    if disk.startswith("vision_tower."):
        return "vision_tower.vision_model." + disk[len("vision_tower."):]
    return disk


def old_schema(cfg_dict):
    d = json.loads(json.dumps(cfg_dict))
    t = d["text_config"]
    t.pop("rope_parameters", None)
    t.pop("layer_types", None)
    t["rope_theta"] = 1000000.0
    t["rope_local_base_freq"] = 10000.0
    t["rope_scaling"] = {"rope_type": "linear", "factor": 8.0}
    t["sliding_window_pattern"] = 3
    return d


def row(text_before, images, text_after, length):
    ids = [BOS] + text_before
    for _ in range(images):
        ids += [BOI] + [IMAGE] * MM_TOKENS + [EOI]
    ids += text_after
    mask = [1] * len(ids) + [0] * (length - len(ids))
    ids = ids + [PAD] * (length - len(ids))
    return ids, mask


def make_batch(rows, gen, n_images):
    ids = torch.tensor([r[0] for r in rows], dtype=torch.int64)
    mask = torch.tensor([r[1] for r in rows], dtype=torch.int64)
    tt = (ids == IMAGE).to(torch.int64)
    labels = ids.clone()
    labels[(mask == 0) | (ids == IMAGE) | (ids == BOI) | (ids == EOI)] = -100
    batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": tt, "labels": labels}
    if n_images:
        batch["pixel_values"] = torch.rand((n_images, 3, 32, 32), generator=gen) * 2 - 1
    return batch


def cases(gen):
    t = lambda *xs: list(xs)
    return {
        "two_rows_one_image_each": make_batch(
            [row(t(5, 9), 1, t(17, 33, 44, 8, 1), 16), row(t(7), 1, t(50, 61, 72, 3, 90, 1), 16)], gen, 2),
        "two_images_and_padded_text_row": make_batch(
            [row(t(11), 2, t(30, 1), 20), row(t(13, 14, 15, 16, 17, 18, 19, 1), 0, [], 20)], gen, 2),
        "text_only": make_batch(
            [row(t(3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13), 0, [], 14), row(t(40, 41, 42, 43, 1), 0, [], 14)], gen, 0),
    }


def run_case(model, batch):
    model.zero_grad(set_to_none=True)
    inputs = {k: v for k, v in batch.items()}
    pv = inputs.get("pixel_values")
    if pv is not None:
        pv = pv.clone().requires_grad_(True)
        inputs["pixel_values"] = pv
    out = model(**inputs, output_hidden_states=True, return_dict=True)
    out.loss.backward()
    res = {"logits": out.logits.detach().float().contiguous(), "loss": out.loss.detach().float().reshape(1)}
    for i, h in enumerate(out.hidden_states):
        res[f"hidden_states.{i}"] = h.detach().float().contiguous()
    if pv is not None:
        res["image_features"] = out.image_hidden_states.detach().float().contiguous()
        res["grad.pixel_values"] = pv.grad.detach().float().contiguous()
    for name, p in model.named_parameters():
        if p.grad is not None:
            res["grad." + disk_name(name)] = p.grad.detach().float().contiguous()
    return res


def main():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1234)
    config = build_config()
    model = Gemma3ForConditionalGeneration(config).eval()
    reinit(model, gen)
    if os.path.isdir(ROOT):
        shutil.rmtree(ROOT)
    os.makedirs(os.path.join(ROOT, "cases"))
    model_dir = os.path.join(ROOT, "model")
    model.save_pretrained(model_dir)
    # Hub layout with the old config schema.
    hub_dir = os.path.join(ROOT, "model-hub")
    os.makedirs(hub_dir)
    sd = load_file(os.path.join(model_dir, "model.safetensors"))
    save_file({hub_name(k): v for k, v in sd.items()}, os.path.join(hub_dir, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    with open(os.path.join(hub_dir, "config.json"), "w") as f:
        json.dump(old_schema(cfg), f, indent=2)
    bf16_dir = os.path.join(ROOT, "model-bf16")
    copy.deepcopy(model).to(torch.bfloat16).save_pretrained(bf16_dir)

    hub_model = Gemma3ForConditionalGeneration.from_pretrained(hub_dir).eval()
    bf16_model = Gemma3ForConditionalGeneration.from_pretrained(bf16_dir, dtype=torch.bfloat16).eval()
    manifest = {
        "transformers": transformers.__version__, "torch": torch.__version__,
        "cases": {}, "note": "f32 eager attention; loss = mean CE over labels != -100 (shifted)",
    }
    for name, batch in cases(gen).items():
        res = run_case(model, batch)
        with torch.no_grad():
            hub_logits = hub_model(**batch).logits.float()
            bf16_loss = bf16_model(**{k: (v.to(torch.bfloat16) if k == "pixel_values" else v) for k, v in batch.items()}).loss
        diff = (hub_logits - res["logits"]).abs().max().item()
        if diff > 1e-5:
            sys.exit(f"{name}: the hub layout with the old config gives different logits (max diff {diff})")
        tensors = {k: v.contiguous() for k, v in batch.items()}
        tensors.update(res)
        save_file(tensors, os.path.join(ROOT, "cases", name + ".safetensors"))
        manifest["cases"][name] = {
            "loss": res["loss"].item(), "bf16_loss": bf16_loss.float().item(),
            "batch": list(batch["input_ids"].shape), "images": int(batch.get("pixel_values", torch.empty(0)).shape[0]) if "pixel_values" in batch else 0,
        }
        print(f"{name}: loss {res['loss'].item():.6f} (bf16 {bf16_loss.float().item():.6f}), hub layout max |dlogits| {diff:.1e}")
    make_adapter_fixture(model, cases(torch.Generator().manual_seed(1234)), manifest)
    with open(os.path.join(ROOT, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)


LORA_TARGETS = r".*\.(q_proj|k_proj|v_proj|o_proj|out_proj|fc1|fc2|gate_proj|up_proj|down_proj)"


def make_adapter_fixture(model, batches, manifest):
    """A PEFT LoRA adapter on every linear of both towers, with random non-zero A and B (PEFT's
    default B = 0 would make every A gradient zero), saved in PEFT's format; and one case with
    its logits, loss and the gradient of every adapter tensor under its key in the adapter file."""
    from peft import LoraConfig, get_peft_model

    gen = torch.Generator().manual_seed(99)
    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=LORA_TARGETS)
    peft_model = get_peft_model(copy.deepcopy(model), cfg)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    adapter_dir = os.path.join(ROOT, "adapter")
    peft_model.save_pretrained(adapter_dir)
    os.remove(os.path.join(adapter_dir, "README.md"))  # PEFT's model card template
    peft_model.eval()
    batch = batches["two_rows_one_image_each"]
    peft_model.zero_grad(set_to_none=True)
    out = peft_model(**batch)
    out.loss.backward()
    res = {"logits": out.logits.detach().float().contiguous(), "loss": out.loss.detach().float().reshape(1)}
    for name, p in peft_model.named_parameters():
        if p.grad is not None:
            key = name.replace(".default", "")
            res["grad." + key] = p.grad.detach().float().contiguous()
    # One AdamW step on the adapter (torch defaults but lr 1e-2, weight decay 0.01).
    lora_params = [(n, p) for n, p in peft_model.named_parameters() if "lora_" in n]
    opt = torch.optim.AdamW([p for _, p in lora_params], lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    opt.step()
    for name, p in lora_params:
        res["after_adamw_step." + name.replace(".default", "")] = p.detach().float().contiguous()
    tensors = {k: v.contiguous() for k, v in batch.items()}
    tensors.update(res)
    save_file(tensors, os.path.join(ROOT, "cases", "adapter_two_rows_one_image_each.safetensors"))
    keys = load_file(os.path.join(adapter_dir, "adapter_model.safetensors")).keys()
    missing = [k for k in keys if "grad." + k not in res]
    if missing:
        sys.exit(f"adapter tensors without a gradient: {missing[:3]}")
    manifest["adapter"] = {"loss": out.loss.item(), "tensors": len(keys)}
    print(f"adapter case: loss {out.loss.item():.6f}, {len(keys)} adapter tensors")


if __name__ == "__main__":
    main()
