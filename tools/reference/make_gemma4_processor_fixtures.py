#!/usr/bin/env python3
"""Gemma 4's processor files for the tiny Gemma 4 fixtures, and what HF's processor makes of a
dataset (no hub access, no torch).

Writes into tests/fixtures/tiny-gemma4-dense/model and tests/fixtures/tiny-gemma4-e/model (both
have the same 128-token vocabulary with the image token at 120, boi 121, eoi 122):
  tokenizer.json          a character-level BPE with a few merges and Gemma 4's special tokens
                          (<|turn>, <turn|>, <|channel>, <channel|>, <|image|>, <|image>, <image|>)
  tokenizer_config.json   the special tokens by role, as Gemma 4's tokenizer config names them
  processor_config.json   Gemma4ImageProcessor's settings for the tiny vision tower: 4x4-pixel
                          patches pooled 2x2, a budget of 70 soft tokens (the smallest HF allows)
  chat_template.jinja     Gemma 4's chat format (see CHAT_TEMPLATE)
so that `lapidary train` runs on them. And tests/fixtures/processor-gemma4/:
  images/, data.jsonl     images of several sizes, formats and aspect ratios (one so thin that
                          HF's rounding gives it a height of 0 before its fallback), rows with
                          none, one or two images, a system turn, a thinking trace in an answer
  train.jsonl             rows whose images fit the tiny tower's 16x16 position table
  expected.safetensors    per row: input_ids, attention_mask, mm_token_type_ids, labels (-100
                          outside the assistant turns), pixel_values, image_position_ids,
                          num_soft_tokens_per_image as Gemma4ImageProcessorPil + the tokenizer give them
  expected.json           the rendered texts, a generation prompt, and target sizes of
                          get_aspect_ratio_preserving_size for many image sizes under the released
                          settings (patch 16, pooling 3, every budget)

    .venv/bin/python tools/reference/make_gemma4_processor_fixtures.py
"""

import json
import os

import numpy as np
import transformers
from PIL import Image
from safetensors.numpy import save_file
from tokenizers import Tokenizer, decoders, models
from transformers.image_utils import load_image
from transformers.models.gemma4.image_processing_pil_gemma4 import (
    Gemma4ImageProcessorPil,
    get_aspect_ratio_preserving_size,
)
from transformers.utils.chat_template_utils import render_jinja_template

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.join(HERE, "..", "..")
MODEL_DIRS = [os.path.join(REPO, "tests", "fixtures", d, "model") for d in ("tiny-gemma4-dense", "tiny-gemma4-e")]
FIXTURES = os.path.join(REPO, "tests", "fixtures", "processor-gemma4")

PATCH, POOL, BUDGET = 4, 2, 70
SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<|turn>", "<turn|>", "<|channel>", "<channel|>"]
IMAGE_TOKENS = {120: "<|image|>", 121: "<|image>", 122: "<image|>"}
MERGES = [("\n", "\n"), ("t", "h"), ("h", "e"), ("i", "n"), ("a", "n"), (" ", "t"), (" ", "a"), ("e", "r"),
          ("r", "e"), ("o", "n"), ("a", "t"), ("i", "s"), ("o", "u"), ("e", "s"), ("t", "i"), ("e", "d")]

# Gemma 4's chat format: BOS; a first system message as a turn of its own; each message as
# <|turn>{role}\n...<turn|>\n with "assistant" spoken as "model"; user text trimmed, answers with
# their thinking (<|channel>...<channel|>) removed and trimmed; each image as \n\n<|image|>\n\n
# (the processor expands <|image|>); the generation prompt opens a model turn with an empty
# thinking channel (thinking off).
CHAT_TEMPLATE = (
    "{%- macro strip_thinking(text) -%}{%- set ns = namespace(out='') -%}"
    "{%- for part in text.split('<channel|>') -%}"
    "{%- if '<|channel>' in part -%}{%- set ns.out = ns.out + part.split('<|channel>')[0] -%}"
    "{%- else -%}{%- set ns.out = ns.out + part -%}{%- endif -%}{%- endfor -%}"
    "{{- ns.out | trim -}}{%- endmacro -%}"
    "{{ bos_token }}"
    "{%- set loop_messages = messages -%}"
    "{%- if messages[0]['role'] in ['system', 'developer'] -%}"
    "{{- '<|turn>system\n' -}}"
    "{%- if messages[0]['content'] is string -%}{{- messages[0]['content'] | trim -}}"
    "{%- else -%}{%- for item in messages[0]['content'] -%}{{- item['text'] | trim -}}{%- endfor -%}{%- endif -%}"
    "{{- '<turn|>\n' -}}{%- set loop_messages = messages[1:] -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{- '<|turn>' + role + '\n' -}}"
    "{%- if message['content'] is string -%}"
    "{%- if role == 'model' -%}{{- strip_thinking(message['content']) -}}{%- else -%}{{- message['content'] | trim -}}{%- endif -%}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'text' -%}"
    "{%- if role == 'model' -%}{{- strip_thinking(item['text']) -}}{%- else -%}{{- item['text'] | trim -}}{%- endif -%}"
    "{%- elif item['type'] == 'image' -%}{{- '\n\n<|image|>\n\n' -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<turn|>\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|turn>model\n<|channel>thought\n<channel|>' -}}{%- endif -%}"
)


def build_tokenizer():
    """Characters (printable ASCII and newline), the merges above, the special tokens; 128 ids."""
    chars = [chr(c) for c in range(32, 127)] + ["\n"]
    vocab = {t: i for i, t in enumerate(SPECIALS + chars)}
    for a, b in MERGES:
        vocab[a + b] = len(vocab)
    assert len(vocab) == 120, len(vocab)
    for i, t in IMAGE_TOKENS.items():
        vocab[t] = i
    for i in range(123, 128):
        vocab[f"<unused{i - 123}>"] = i
    tok = Tokenizer(models.BPE(vocab=vocab, merges=MERGES, unk_token="<unk>"))
    tok.add_special_tokens(SPECIALS + list(IMAGE_TOKENS.values()))
    tok.decoder = decoders.Fuse()
    assert tok.get_vocab_size() == 128
    return tok


def image_processor():
    return Gemma4ImageProcessorPil(patch_size=PATCH, pooling_kernel_size=POOL, max_soft_tokens=BUDGET)


def write_model_files(tok):
    tokenizer_config = {
        "tokenizer_class": "GemmaTokenizer", "processor_class": "Gemma4Processor", "padding_side": "right",
        "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>",
        "image_token": "<|image|>", "boi_token": "<|image>", "eoi_token": "<image|>",
        "sot_token": "<|turn>", "eot_token": "<turn|>", "soc_token": "<|channel>", "eoc_token": "<channel|>",
    }
    ip = image_processor()
    processor_config = {
        "processor_class": "Gemma4Processor", "image_seq_length": BUDGET,
        "image_processor": {
            "image_processor_type": "Gemma4ImageProcessor", "patch_size": ip.patch_size,
            "pooling_kernel_size": ip.pooling_kernel_size, "max_soft_tokens": ip.max_soft_tokens,
            "do_resize": True, "resample": int(ip.resample), "do_rescale": True, "rescale_factor": ip.rescale_factor,
            "do_normalize": False, "image_mean": list(ip.image_mean), "image_std": list(ip.image_std),
            "do_convert_rgb": True,
        },
    }
    for d in MODEL_DIRS:
        tok.save(os.path.join(d, "tokenizer.json"))
        with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
            json.dump(tokenizer_config, f, indent=2)
        with open(os.path.join(d, "processor_config.json"), "w") as f:
            json.dump(processor_config, f, indent=2)
        with open(os.path.join(d, "chat_template.jinja"), "w") as f:
            f.write(CHAT_TEMPLATE)


def fixture_images():
    rng = np.random.default_rng(4)
    os.makedirs(os.path.join(FIXTURES, "images"), exist_ok=True)
    out = {}

    def save(name, arr, mode, **kw):
        path = os.path.join("images", name)
        Image.fromarray(arr, mode=mode).save(os.path.join(FIXTURES, path), **kw)
        out[name] = path

    save("wide_noise.png", rng.integers(0, 256, (20, 60, 3), dtype=np.uint8), "RGB")
    yy, xx = np.mgrid[0:50, 0:18]
    grad = np.stack([yy * 5, xx * 14, (yy + xx) * 3], axis=-1).clip(0, 255).astype(np.uint8)
    save("tall_gradient.jpg", grad, "RGB", quality=90)
    save("square_rgba.png", rng.integers(0, 256, (33, 33, 4), dtype=np.uint8), "RGBA")
    save("tiny.webp", rng.integers(0, 256, (7, 5, 3), dtype=np.uint8), "RGB", lossless=True)
    save("sliver.png", rng.integers(0, 256, (5, 400, 3), dtype=np.uint8), "RGB")
    save("at_target.png", rng.integers(0, 256, (48, 80, 3), dtype=np.uint8), "RGB")
    save("square_small.png", rng.integers(0, 256, (20, 20, 3), dtype=np.uint8), "RGB")
    return out


def img(path):
    return {"type": "image", "path": path}


def txt(text):
    return {"type": "text", "text": text}


def fixture_rows(im):
    return [
        [{"role": "user", "content": [img(im["wide_noise.png"]), txt("What is in the image?")]},
         {"role": "assistant", "content": "A noisy strip."}],
        [{"role": "system", "content": "Answer briefly."},
         {"role": "user", "content": [txt("Compare "), img(im["tall_gradient.jpg"]), txt(" and"), img(im["square_rgba.png"])]},
         {"role": "assistant", "content": [txt("<|channel>thought\nlook first<channel|> The first is a gradient.")]},
         {"role": "user", "content": "And now?  "},
         {"role": "assistant", "content": "Still the same."}],
        [{"role": "user", "content": "Say hi!"}, {"role": "assistant", "content": " Hi there, 42 times. "}],
        [{"role": "user", "content": [img(im["tiny.webp"]), img(im["sliver.png"]), txt("Two odd ones.")]},
         {"role": "assistant", "content": "Yes."}],
        [{"role": "user", "content": [img(im["at_target.png"]), txt("Unchanged size?")]},
         {"role": "assistant", "content": "It is."}],
    ]


def train_rows(im):
    return [
        [{"role": "user", "content": [img(im["square_rgba.png"]), txt("What is in the image?")]},
         {"role": "assistant", "content": "Noise in four channels."}],
        [{"role": "user", "content": [txt("Two:"), img(im["square_small.png"]), img(im["square_rgba.png"])]},
         {"role": "assistant", "content": "Two noisy squares."}],
        [{"role": "user", "content": "No image here."}, {"role": "assistant", "content": "Then text it is."}],
        [{"role": "system", "content": "Be brief."},
         {"role": "user", "content": [img(im["square_small.png"]), txt("And this?")]},
         {"role": "assistant", "content": "A small square."}],
    ]


def assistant_spans(text):
    spans, at = [], 0
    head, tail = "<|turn>model\n", "<turn|>\n"
    while (s := text.find(head, at)) >= 0:
        start = s + len(head)
        e = text.find(tail, start)
        end = len(text) if e < 0 else e + len(tail)
        spans.append((start, end))
        at = end
    return spans


def render(messages, generation_prompt=False):
    return render_jinja_template(conversations=[messages], chat_template=CHAT_TEMPLATE,
                                 add_generation_prompt=generation_prompt, bos_token="<bos>")[0][0]


def encode(tok, ip, messages):
    """What Gemma4Processor gives: the rendered text with each <|image|> replaced by
    boi + soft tokens + eoi (replace_image_token), tokenized without special tokens added."""
    text = render(messages)
    images = [load_image(p["path"]) for m in messages if not isinstance(m["content"], str)
              for p in m["content"] if p["type"] == "image"]
    out = {}
    if images:
        feats = ip(images, return_tensors="np")
        counts = [int(n) for n in feats["num_soft_tokens_per_image"]]
        pieces = text.split("<|image|>")
        assert len(pieces) == len(counts) + 1
        text = pieces[0] + "".join("<|image>" + "<|image|>" * n + "<image|>" + rest for n, rest in zip(counts, pieces[1:]))
        out["pixel_values"] = feats["pixel_values"].astype(np.float32)
        out["image_position_ids"] = feats["image_position_ids"].astype(np.int64)
        out["num_soft_tokens_per_image"] = np.array(counts, dtype=np.int64)
    enc = tok.encode(text, add_special_tokens=False)
    ids = np.array(enc.ids, dtype=np.int64)
    spans = assistant_spans(text)
    out["input_ids"] = ids
    out["attention_mask"] = np.ones_like(ids)
    out["mm_token_type_ids"] = (ids == 120).astype(np.int64)
    out["labels"] = np.array([t if any(s <= a and b <= e for s, e in spans) else -100
                              for t, (a, b) in zip(enc.ids, enc.offsets)], dtype=np.int64)
    return text, out


def main():
    tok = build_tokenizer()
    write_model_files(tok)
    im = fixture_images()
    ip = image_processor()
    rows, train = fixture_rows(im), train_rows(im)
    for name, rs in (("data.jsonl", rows), ("train.jsonl", train)):
        with open(os.path.join(FIXTURES, name), "w") as f:
            for r in rs:
                f.write(json.dumps({"messages": r}, ensure_ascii=False) + "\n")
    tensors, texts = {}, []
    cwd = os.getcwd()
    os.chdir(FIXTURES)  # image paths in the rows are relative to the dataset file
    try:
        for i, r in enumerate(rows):
            text, out = encode(tok, ip, r)
            texts.append(text)
            for k, v in out.items():
                tensors[f"row{i}.{k}"] = np.ascontiguousarray(v)
        for i, r in enumerate(train):
            _, out = encode(tok, ip, r)
            if "image_position_ids" in out:
                assert out["image_position_ids"].max() < 16, f"train row {i} does not fit the tiny tower"
        prompt_messages = rows[1][:4]
        generation_prompt = render(prompt_messages, generation_prompt=True)
    finally:
        os.chdir(cwd)
    save_file(tensors, os.path.join(FIXTURES, "expected.safetensors"))
    sizes = [(h, w) for h in (1, 2, 3, 5, 17, 48, 100, 224, 333, 480, 768, 1000, 1080, 2048, 4000)
             for w in (1, 7, 64, 299, 640, 1024, 1920, 3000, 8000)]
    targets = []
    for budget in (70, 140, 280, 560, 1120):
        for h, w in sizes:
            try:
                t = list(get_aspect_ratio_preserving_size(h, w, 16, budget * 9, 3))
            except ValueError as e:
                t = str(e)
            targets.append({"height": h, "width": w, "max_soft_tokens": budget, "target": t})
    with open(os.path.join(FIXTURES, "expected.json"), "w") as f:
        json.dump({"transformers": transformers.__version__, "texts": texts,
                   "generation_prompt": {"messages": prompt_messages, "text": generation_prompt},
                   "target_sizes": targets}, f, ensure_ascii=False, indent=1)
    print("rows", len(rows), "tensors", len(tensors), "targets", len(targets))


if __name__ == "__main__":
    main()
