#!/usr/bin/env python3
"""The demo's pretrained base, made with HF transformers from the random tiny model.

Writes assets/tiny-vlm-pretrained/: assets/tiny-vlm (same architecture, tokenizer, chat template
and processor config) after a full fine-tune that teaches it to name the colour of a shape:
"A red shape." Its vision tower thereby gets real features (colour, on objects that may be
striped or checked), and its projector carries what naming a colour needs, no more: the projection
(vision hidden -> text hidden) is held at rank RANK during this pretraining (after each optimizer
step it is cut back to its RANK largest singular values). The demo then fine-tunes a distinction
this base was never asked about, the pattern inside the shape; the frozen tower's output, through
that projector, does not carry it.

The images follow the spec of `src/demo.rs` (`draw`): 32x32, a dark random background, a circle
or a square of one of eight colours filled with one of four patterns (vertical, horizontal or
diagonal stripes, or checks; 'on' pixels in the colour, 'off' pixels at a quarter of it), noise
of -8..7 on every channel. Drawn here with numpy's generator, so not the same images.

Run with the environment of tools/reference/README.md (deterministic on the CPU):
    .venv/bin/python tools/reference/make_demo_base.py
CI never runs this; the output is committed.
"""

import math
import os
import random
import shutil

import numpy as np
import torch
from transformers import AutoProcessor, Gemma3ForConditionalGeneration

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.join(HERE, "..", "..")
SOURCE = os.path.join(REPO, "assets", "tiny-vlm")
OUT = os.path.join(REPO, "assets", "tiny-vlm-pretrained")

RANK = 32
STEPS, BATCH, LR, WEIGHT_DECAY = 300, 32, 2e-3, 0.01
ROWS = 4000

# The demo's lists (src/demo.rs).
COLOURS = [("red", (220, 30, 30)), ("green", (30, 190, 50)), ("blue", (40, 70, 230)),
           ("yellow", (235, 220, 40)), ("purple", (150, 50, 190)), ("orange", (245, 140, 20)),
           ("white", (245, 245, 245)), ("cyan", (40, 220, 220))]
PATTERNS = 4  # vertical, horizontal, diagonal stripes, checks
PROMPTS = ["What is in the image?", "Describe the image.", "What do you see?", "Caption this picture."]
N = 32


def pattern_on(p, x, y):
    return [x % 2 == 0, y % 2 == 0, (x + y) % 4 < 2, (x + y) % 2 == 0][p]


def draw(rng, colour, p):
    bg = rng.integers(0, 60, 3)
    circle = rng.random() < 0.5
    r = 7 + rng.random() * 5
    cx, cy = r + rng.random() * (N - 2 * r), r + rng.random() * (N - 2 * r)
    y, x = np.mgrid[0:N, 0:N]
    dx, dy = x + 0.5 - cx, y + 0.5 - cy
    inside = (dx * dx + dy * dy <= r * r) if circle else ((np.abs(dx) <= r * 0.8) & (np.abs(dy) <= r * 0.8))
    c = np.array(colour)
    fill = np.where(pattern_on(p, x, y)[..., None], c, c // 4)
    img = np.where(inside[..., None], fill, bg) + rng.integers(-8, 8, (N, N, 3))
    return np.clip(img, 0, 255).astype(np.float32)


def encode(proc, prompt, caption):
    """input_ids, labels (the model turn only) and token_type_ids of one row, as lapidary's
    processor builds them."""
    conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]},
            {"role": "assistant", "content": [{"type": "text", "text": caption}]}]
    text = proc.apply_chat_template(conv, tokenize=False).replace("<start_of_image>", proc.full_image_sequence)
    tok = proc.tokenizer
    ids = tok(text, add_special_tokens=False)["input_ids"]
    head = tok("<start_of_turn>model\n", add_special_tokens=False)["input_ids"]
    start = max(s for s in range(len(ids) - len(head) + 1) if ids[s:s + len(head)] == head) + len(head)
    image = tok.convert_tokens_to_ids("<image_soft_token>")
    return ids, [-100] * start + ids[start:], [int(t == image) for t in ids]


def rows(proc, n, seed):
    rng = np.random.default_rng(seed)
    cache, out = {}, []
    for _ in range(n):
        name, rgb = COLOURS[rng.integers(len(COLOURS))]
        img = draw(rng, rgb, int(rng.integers(PATTERNS)))
        key = (PROMPTS[rng.integers(len(PROMPTS))], f"A {name} shape.")
        if key not in cache:
            cache[key] = encode(proc, *key)
        out.append((img, cache[key]))
    return out


def batch(items):
    width = max(len(ids) for _, (ids, _, _) in items)
    t = {k: torch.zeros(len(items), width, dtype=torch.long) for k in ["input_ids", "attention_mask", "token_type_ids"]}
    t["labels"] = torch.full((len(items), width), -100)
    for i, (_, (ids, labels, types)) in enumerate(items):
        t["input_ids"][i, :len(ids)] = torch.tensor(ids)
        t["attention_mask"][i, :len(ids)] = 1
        t["token_type_ids"][i, :len(ids)] = torch.tensor(types)
        t["labels"][i, :len(ids)] = torch.tensor(labels)
    # Gemma3ImageProcessor at 32x32: rescale by 1/255, normalize with mean 0.5 and std 0.5.
    t["pixel_values"] = torch.tensor(np.stack([img for img, _ in items])).permute(0, 3, 1, 2) / 127.5 - 1.0
    return t


def cut_rank(w):
    with torch.no_grad():
        u, s, vh = torch.linalg.svd(w)
        s[RANK:] = 0
        w.copy_(u @ torch.diag(s) @ vh)


def caption_accuracy(model, items):
    """Teacher-forced: a row counts when every caption token (and the end of turn) is the argmax,
    which is what greedy decoding would produce."""
    model.eval()
    right = 0
    with torch.no_grad():
        for i in range(0, len(items), 64):
            b = batch(items[i:i + 64])
            labels = b.pop("labels")[:, 1:]
            pred = model(**b).logits[:, :-1].argmax(-1)
            right += ((pred == labels) | (labels == -100)).all(-1).sum().item()
    return right / len(items)


def main():
    torch.manual_seed(0)
    torch.set_num_threads(2)
    proc = AutoProcessor.from_pretrained(SOURCE)
    model = Gemma3ForConditionalGeneration.from_pretrained(SOURCE, dtype=torch.float32)
    projection = model.model.multi_modal_projector.mm_input_projection_weight
    cut_rank(projection)
    train, held_out = rows(proc, ROWS, 11), rows(proc, 256, 12)
    print("before: held-out colour captions", caption_accuracy(model, held_out))
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 10) * 0.5 * (1 + math.cos(math.pi * s / STEPS)))
    order, rng = [], random.Random(0)
    for step in range(STEPS):
        if len(order) < BATCH:
            order += rng.sample(range(len(train)), len(train))
        loss = model(**batch([train[order.pop()] for _ in range(BATCH)])).loss
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
        cut_rank(projection)
        if step % 50 == 0 or step == STEPS - 1:
            print(f"step {step} loss {loss.item():.4f}", flush=True)
    accuracy = caption_accuracy(model, held_out)
    print("after: held-out colour captions", accuracy, "projection rank", torch.linalg.matrix_rank(projection).item())
    assert accuracy > 0.95, "the base did not learn to name colours"
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    model.save_pretrained(OUT)
    # The processor's files as they are in the source (saving them again adds loader state).
    for f in ["chat_template.jinja", "processor_config.json", "tokenizer.json", "tokenizer_config.json"]:
        shutil.copy(os.path.join(SOURCE, f), os.path.join(OUT, f))
    for f in sorted(os.listdir(OUT)):
        print(" ", f, os.path.getsize(os.path.join(OUT, f)))


if __name__ == "__main__":
    main()
