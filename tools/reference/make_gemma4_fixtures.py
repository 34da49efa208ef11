#!/usr/bin/env python3
"""Reference fixtures for Gemma 4 parity tests, made with HF transformers 5.24 (no hub access).

Builds two tiny RANDOM Gemma4ForConditionalGeneration models from config objects — a dense one
(the 31B's architecture: K = V projection on full layers, global head dim and KV-head count apart
from the sliding layers', bidirectional image blocks, final logit softcapping) and an E-series one
(per-layer embeddings, KV sharing across the last layers, the double-wide MLP) — each with a
vision tower whose linears are clipped with finite bounds (so the clamps act), re-initializes every
parameter to non-zero values, and writes under tests/fixtures/tiny-gemma4-{dense,e}/:

  model/       config.json + model.safetensors as transformers 5.24 saves them
  cases/NAME.safetensors  inputs (input_ids, attention_mask, mm_token_type_ids, labels as int64;
               pixel_values [images, patches, 3·p·p] f32, image_position_ids [images, patches, 2]
               int64 with -1 on padding, num_soft_tokens_per_image int64, when there are
               images), logits, loss, hidden_states.N, image_features, grad.pixel_values and
               grad.<on-disk name> for every parameter (f32 model, eager attention)
  adapter/     a PEFT LoRA adapter (r 4, alpha 8, every linear of both towers: the vision tower's
               clipped linears through their inner `.linear`, as PEFT names them; random A and B)
  cases/adapter_two_images_and_padded_text_row.safetensors  logits, loss and grad.<adapter key>
  manifest.json  versions, configs' key facts, cases and losses, the fraction of values each
               clamp changed

Images are laid out as Gemma4ImageProcessor lays them out (patches row by row, (x, y) positions,
padding patches zero with position -1) at a tiny patch size and soft-token budget: the model
code does not depend on the budget; the processor's own parity is checked elsewhere.

Run:  .venv/bin/python tools/reference/make_gemma4_fixtures.py   (torch 2.15.0, transformers
      5.24.0, peft 0.21.2, safetensors). CI never runs this; the fixtures are committed.
"""

import copy
import json
import os
import shutil
import sys

import numpy as np
import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import Gemma4Config, Gemma4ForConditionalGeneration, Gemma4TextConfig, Gemma4VisionConfig
from transformers.models.gemma4.image_processing_pil_gemma4 import convert_image_to_patches, pad_along_first_dim

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "..", "tests", "fixtures")
IMAGE, BOI, EOI, PAD, BOS, EOS = 120, 121, 122, 0, 2, 1
PATCH, POOL, BUDGET = 4, 2, 6  # patch size, pooling kernel, soft tokens per image at most
MAX_PATCHES = BUDGET * POOL * POOL


def vision_config():
    return Gemma4VisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
        head_dim=8, patch_size=PATCH, pooling_kernel_size=POOL, position_embedding_size=16,
        use_clipped_linears=True, standardize=True, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "axial", "rope_theta": 100.0},
    )


def text_config(kind):
    common = dict(
        vocab_size=128, hidden_size=64, intermediate_size=96, num_attention_heads=4, head_dim=16,
        sliding_window=5, max_position_embeddings=256, rms_norm_eps=1e-6, final_logit_softcapping=30.0,
        pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS, use_bidirectional_attention="vision",
        rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1000000.0},
        },
    )
    if kind == "dense":
        # As released checkpoints carry them: global_head_dim / num_global_key_value_heads.
        return Gemma4TextConfig(
            **common, num_hidden_layers=4, num_key_value_heads=2, global_head_dim=32, num_global_key_value_heads=1,
            attention_k_eq_v=True, hidden_size_per_layer_input=0,
            layer_types=["sliding_attention", "sliding_attention", "sliding_attention", "full_attention"],
        )
    return Gemma4TextConfig(
        **common, num_hidden_layers=5, num_key_value_heads=1, global_head_dim=32,
        hidden_size_per_layer_input=8, vocab_size_per_layer_input=128, num_kv_shared_layers=2,
        use_double_wide_mlp=True,
        layer_types=["sliding_attention", "full_attention", "sliding_attention", "sliding_attention", "full_attention"],
    )


def build_config(kind):
    return Gemma4Config(
        text_config=text_config(kind).to_dict(), vision_config=vision_config().to_dict(), audio_config=None,
        image_token_id=IMAGE, boi_token_id=BOI, eoi_token_id=EOI,
    )


def reinit(model, gen):
    """Every parameter non-zero: weights ~ N(0, 1/fan_in), norms, scalars and tables ~ N(0, 0.1)
    (layer scalars around 1); the clipped linears' bounds finite and tight enough to clip."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2 and "position_embedding_table" not in name:
                p.copy_(torch.randn(p.shape, generator=gen) / p[0].numel() ** 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
        for name, b in model.named_buffers():
            if name.endswith("layer_scalar"):
                b.copy_(1.0 + torch.randn(b.shape, generator=gen) * 0.1)
            elif name.endswith("input_min") or name.endswith("output_min"):
                b.fill_(-0.12 if "input" in name else -0.05)
            elif name.endswith("input_max") or name.endswith("output_max"):
                b.fill_(0.1 if "input" in name else 0.045)
            elif name.endswith("std_bias"):
                b.copy_(torch.randn(b.shape, generator=gen) * 0.1)
            elif name.endswith("std_scale"):
                b.copy_(1.0 + torch.randn(b.shape, generator=gen) * 0.1)


def disk_name(name):
    """In-memory parameter name -> the key transformers 5.24 writes to disk."""
    return name[len("model."):] if name.startswith("model.") else name


def image(gen, height, width):
    """A random image in [0, 1] laid out as Gemma4ImageProcessor lays it out: patches row by row,
    (x, y) patch positions, padded to MAX_PATCHES with zero patches at position -1."""
    pixels = torch.rand((3, height, width), generator=gen).numpy()
    patches = convert_image_to_patches(pixels, PATCH)
    gx, gy = np.meshgrid(np.arange(width // PATCH), np.arange(height // PATCH), indexing="xy")
    positions = np.stack([gx, gy], axis=-1).reshape(patches.shape[0], 2)
    soft = patches.shape[0] // (POOL * POOL)
    patches, positions = pad_along_first_dim(patches, positions, MAX_PATCHES)
    return torch.from_numpy(patches).float(), torch.from_numpy(positions).long(), soft


def row(parts, length):
    """Token ids from text lists and image soft-token counts (`("img", n)`), padded to `length`."""
    ids = [BOS]
    for p in parts:
        ids += [BOI] + [IMAGE] * p[1] + [EOI] if isinstance(p, tuple) else p
    mask = [1] * len(ids) + [0] * (length - len(ids))
    return ids + [PAD] * (length - len(ids)), mask


def make_batch(rows, images):
    ids = torch.tensor([r[0] for r in rows], dtype=torch.int64)
    mask = torch.tensor([r[1] for r in rows], dtype=torch.int64)
    labels = ids.clone()
    labels[(mask == 0) | (ids == IMAGE) | (ids == BOI) | (ids == EOI)] = -100
    batch = {
        "input_ids": ids, "attention_mask": mask, "mm_token_type_ids": (ids == IMAGE).to(torch.int64),
        "labels": labels,
    }
    if images:
        batch["pixel_values"] = torch.stack([i[0] for i in images])
        batch["image_position_ids"] = torch.stack([i[1] for i in images])
        batch["num_soft_tokens_per_image"] = torch.tensor([i[2] for i in images], dtype=torch.int64)
    return batch


def cases(gen):
    # Two aspect ratios: 16 x 24 px (4 x 6 patches, 6 soft tokens) and 8 x 16 px (2 x 4 patches,
    # 2 soft tokens, the rest of its patch slots padding).
    wide, small = image(gen, 16, 24), image(gen, 8, 16)
    tall = image(gen, 24, 16)
    return {
        "two_images_and_padded_text_row": make_batch(
            [row([[11, 12], ("img", wide[2]), [30, 31], ("img", small[2]), [40, 41, 42, EOS]], 24),
             row([[13, 14, 15, 16, 17, 18, 19, EOS]], 24)],
            [wide, small]),
        "one_image_each": make_batch(
            [row([[5], ("img", tall[2]), [17, 33, 44, 8, EOS]], 16), row([[7, 9], ("img", small[2]), [50, 61, EOS]], 16)],
            [tall, small]),
        "text_only": make_batch(
            [row([[3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]], 14), row([[40, 41, 42, 43, EOS]], 14)], []),
    }


def model_inputs(batch):
    return {k: v for k, v in batch.items() if k != "num_soft_tokens_per_image"}


def run_case(model, batch):
    model.zero_grad(set_to_none=True)
    inputs = model_inputs(batch)
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
        res["image_features"] = torch.cat(out.image_outputs.pooler_output).detach().float().contiguous()
        res["grad.pixel_values"] = pv.grad.detach().float().contiguous()
    for name, p in model.named_parameters():
        if p.grad is not None:
            res["grad." + disk_name(name)] = p.grad.detach().float().contiguous()
    res["_no_gradient"] = [disk_name(n) for n, p in model.named_parameters() if p.grad is None]
    return res


def clamp_fractions(model, batch):
    """Fraction of values each kind of clamp changed over one forward."""
    seen = {"input": [0, 0], "output": [0, 0]}
    hooks = []
    for name, m in model.named_modules():
        if type(m).__name__ == "Gemma4ClippableLinear" and m.use_clipped_linears:
            def hook(mod, args, out):
                x = args[0]
                y = mod.linear(torch.clamp(x, mod.input_min, mod.input_max))
                seen["input"][0] += ((x < mod.input_min) | (x > mod.input_max)).sum().item()
                seen["input"][1] += x.numel()
                seen["output"][0] += ((y < mod.output_min) | (y > mod.output_max)).sum().item()
                seen["output"][1] += y.numel()
            hooks.append(m.register_forward_hook(hook))
    with torch.no_grad():
        model(**model_inputs(batch))
    for h in hooks:
        h.remove()
    return {k: v[0] / max(v[1], 1) for k, v in seen.items()}


LORA_TARGETS = (
    r".*vision_tower.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)\.linear"
    r"|.*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
)


def make_adapter_fixture(root, model, batch, manifest):
    """A PEFT LoRA adapter on every linear of both towers (the vision tower's through the clipped
    linears' inner `.linear`), random non-zero A and B, and its case."""
    from peft import LoraConfig, get_peft_model

    gen = torch.Generator().manual_seed(99)
    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=LORA_TARGETS)
    peft_model = get_peft_model(copy.deepcopy(model), cfg)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    adapter_dir = os.path.join(root, "adapter")
    peft_model.save_pretrained(adapter_dir)
    os.remove(os.path.join(adapter_dir, "README.md"))  # PEFT's model card template
    peft_model.eval()
    peft_model.zero_grad(set_to_none=True)
    out = peft_model(**model_inputs(batch))
    out.loss.backward()
    res = {"logits": out.logits.detach().float().contiguous(), "loss": out.loss.detach().float().reshape(1)}
    for name, p in peft_model.named_parameters():
        if p.grad is not None:
            res["grad." + name.replace(".default", "")] = p.grad.detach().float().contiguous()
    tensors = {k: v.contiguous() for k, v in batch.items()}
    tensors.update(res)
    save_file(tensors, os.path.join(root, "cases", "adapter_two_images_and_padded_text_row.safetensors"))
    keys = list(load_file(os.path.join(adapter_dir, "adapter_model.safetensors")).keys())
    missing = [k for k in keys if "grad." + k not in res]
    if missing:
        sys.exit(f"adapter tensors without a gradient: {missing[:3]}")
    vision = sum(1 for k in keys if "vision_tower" in k)
    manifest["adapter"] = {"loss": out.loss.item(), "tensors": len(keys), "vision_tensors": vision}
    print(f"  adapter case: loss {out.loss.item():.6f}, {len(keys)} adapter tensors ({vision} in the vision tower)")


def write_released_form(root):
    """config.json in the form released checkpoints carry (`global_head_dim`,
    `num_global_key_value_heads` instead of `per_layer_config`) as `config-released-form.json`;
    checked to give transformers the same per-layer settings."""
    with open(os.path.join(root, "model", "config.json")) as f:
        saved = json.load(f)
    released = json.loads(json.dumps(saved))
    t = released["text_config"]
    overrides = t.pop("per_layer_config")
    full = [v for v in overrides.values()]
    t["global_head_dim"] = full[0]["head_dim"]
    if "num_key_value_heads" in full[0]:
        t["num_global_key_value_heads"] = full[0]["num_key_value_heads"]
    again = Gemma4Config(**{k: v for k, v in released.items() if k in ("text_config", "vision_config")})
    if again.text_config.to_dict()["per_layer_config"] != overrides:
        sys.exit(f"{root}: the released config form gives {again.text_config.to_dict()['per_layer_config']}")
    with open(os.path.join(root, "config-released-form.json"), "w") as f:
        json.dump(released, f, indent=2)


def make(kind):
    root = os.path.join(FIXTURES, f"tiny-gemma4-{kind}")
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(4321)
    model = Gemma4ForConditionalGeneration(build_config(kind)).eval()
    model.config._attn_implementation = "eager"
    reinit(model, gen)
    if os.path.isdir(root):
        shutil.rmtree(root)
    os.makedirs(os.path.join(root, "cases"))
    model.save_pretrained(os.path.join(root, "model"))
    write_released_form(root)
    reloaded = Gemma4ForConditionalGeneration.from_pretrained(os.path.join(root, "model")).eval()  # sdpa
    tc = model.config.text_config
    manifest = {
        "transformers": transformers.__version__, "torch": torch.__version__,
        "note": "f32 eager attention; loss = mean CE over labels != -100 (shifted); compare logits where attention_mask is 1",
        "text": {
            "layer_types": tc.layer_types, "kv_sharing_modes": tc.kv_sharing_modes,
            "per_layer_config": tc.to_dict()["per_layer_config"],
            "attention_k_eq_v": tc.attention_k_eq_v, "hidden_size_per_layer_input": tc.hidden_size_per_layer_input,
            "use_double_wide_mlp": tc.use_double_wide_mlp,
        },
        "cases": {},
    }
    batches = cases(gen)
    for name, batch in batches.items():
        res = run_case(model, batch)
        with torch.no_grad():
            again = reloaded(**model_inputs(batch)).logits.float()
        # Where attention_mask is 1 (padded query rows are implementation-defined).
        real = batch["attention_mask"].bool()
        diff = (again - res["logits"])[real].abs().max().item()
        if diff > 1e-4:
            sys.exit(f"{kind}/{name}: the saved model under sdpa gives other logits (max diff {diff})")
        no_gradient = res.pop("_no_gradient")
        zero = [k for k, v in res.items() if k.startswith("grad.") and v.abs().max().item() == 0.0]
        tensors = {k: v.contiguous() for k, v in batch.items()}
        tensors.update(res)
        save_file(tensors, os.path.join(root, "cases", name + ".safetensors"))
        manifest["cases"][name] = {
            "loss": res["loss"].item(), "batch": list(batch["input_ids"].shape),
            "images": int(batch["pixel_values"].shape[0]) if "pixel_values" in batch else 0,
            "gradients": sum(1 for k in res if k.startswith("grad.")), "all_zero_gradients": zero,
            "no_gradient": no_gradient,
        }
        print(f"{kind}/{name}: loss {res['loss'].item():.6f}, {manifest['cases'][name]['gradients']} gradients, "
              f"all-zero: {zero}, none: {no_gradient}")
    manifest["clamped_fraction"] = clamp_fractions(model, batches["two_images_and_padded_text_row"])
    print(f"  clamped fraction: {manifest['clamped_fraction']}")
    make_adapter_fixture(root, model, batches["two_images_and_padded_text_row"], manifest)
    with open(os.path.join(root, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)


if __name__ == "__main__":
    for kind in ("dense", "e"):
        make(kind)
