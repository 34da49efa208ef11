#!/usr/bin/env python3
"""The bundled demo model and the processor fixtures, made with HF transformers (no hub access).

Writes:

  assets/tiny-vlm/   a tiny RANDOM Gemma3ForConditionalGeneration (SigLIP 32x32 images, patch 4,
                     16 image tokens; a 4-layer Gemma 3 decoder) with its tokenizer (a byte-fallback
                     BPE trained here on the demo's captions and prompts, Gemma 3's special tokens),
                     Gemma 3's chat template and a Gemma3ImageProcessor config: everything
                     `lapidary train` needs. Loads with AutoProcessor / Gemma3ForConditionalGeneration.
  tests/fixtures/processor/
                     images (PNG with alpha, greyscale JPEG, WebP; sizes other than 32x32), a JSONL
                     dataset using them (text-only, system prompt, several images in a row,
                     several turns), and expected.safetensors: for each row, what Gemma3Processor's
                     apply_chat_template gives (input_ids, attention_mask, token_type_ids,
                     pixel_values) plus labels with every token outside the assistant turns at
                     -100; expected.json holds the rendered prompt texts.

Run with the environment of tools/reference/README.md:
    .venv/bin/python tools/reference/make_demo.py
CI never runs this; the outputs are committed.
"""

import json
import os
import random

import numpy as np
import torch
import transformers
from PIL import Image, ImageDraw
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3ImageProcessorPil,
    Gemma3Processor,
    Gemma3TextConfig,
    PreTrainedTokenizerFast,
    SiglipVisionConfig,
)

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.join(HERE, "..", "..")
MODEL_DIR = os.path.join(REPO, "assets", "tiny-vlm")
FIXTURES = os.path.join(REPO, "tests", "fixtures", "processor")

SPECIALS = [
    "<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>",
    "<start_of_image>", "<end_of_image>", "<image_soft_token>",
]
IMAGE_SIZE, PATCH, MM_TOKENS = 32, 4, 16

# The demo's words (the Rust side draws its dataset from the same lists) and some general text,
# so that the tokenizer also covers prompts a user types.
COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "cyan"]
SHAPES = ["circle", "square", "triangle", "cross"]
PROMPTS = ["What is in the image?", "Describe the image.", "What do you see?", "Caption this picture."]
GENERAL = (
    "The quick brown fox jumps over the lazy dog. You are a helpful assistant. Answer in one short "
    "sentence. What colour is it? Which shape is shown? There is a small picture here, and a large "
    "one there. Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100. Punctuation: , . ; : ! ? ( ) [ ] \" ' - "
)

# Gemma 3's chat format: BOS, a system message folded into the first user turn, "assistant"
# spoken as "model", an image as <start_of_image> (the processor expands it), text trimmed.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- if messages[0]['content'] is string -%}{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- else -%}{%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}{%- endif -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if message['role'] == 'assistant' -%}{%- set role = 'model' -%}{%- else -%}{%- set role = message['role'] -%}{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{%- if message['content'] is string -%}{{ message['content'] | trim }}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{ '<start_of_image>' }}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] | trim }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)


def corpus():
    rng = random.Random(0)
    lines = [GENERAL] * 4
    for _ in range(3000):
        c, s = rng.choice(COLOURS), rng.choice(SHAPES)
        lines.append(f"{rng.choice(PROMPTS)}\nA {c} {s}.\n\nThis is a {c} {s} on a dark background.")
    lines.append("user model system")
    return lines


def build_tokenizer():
    """A SentencePiece-style BPE: spaces as U+2581, byte fallback (<0x00>..<0xFF>), BOS added."""
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    # Newlines are pieces of their own (as in Gemma's vocabulary), so that a turn's text never
    # merges with the "\n" of its header: "model\n" + "A" tokenizes the same in a prompt and in
    # a training row.
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split("\n", behavior="isolated"),
        pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="never", split=True),
    ])
    alphabet = [chr(c) for c in range(32, 127)] + ["\n", "\u2581"]
    trainer = trainers.BpeTrainer(vocab_size=420, special_tokens=SPECIALS, initial_alphabet=alphabet,
                                  show_progress=False, limit_alphabet=len(alphabet))
    tok.train_from_iterator(corpus(), trainer)
    # Insert the 256 byte tokens right after the specials (Gemma's layout) and renumber.
    data = json.loads(tok.to_str())
    vocab = data["model"]["vocab"]
    ordered = sorted(vocab.items(), key=lambda kv: kv[1])
    specials = [t for t, _ in ordered if t in SPECIALS]
    rest = [t for t, _ in ordered if t not in SPECIALS]
    new_tokens = specials + [f"<0x{b:02X}>" for b in range(256)] + rest
    data["model"]["vocab"] = {t: i for i, t in enumerate(new_tokens)}
    for added in data["added_tokens"]:
        added["id"] = data["model"]["vocab"][added["content"]]
    tok = Tokenizer.from_str(json.dumps(data))
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    bos = tok.token_to_id("<bos>")
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", bos)])
    return tok


def build_processor(tok):
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>",
        extra_special_tokens={"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                              "image_token": "<image_soft_token>", "sot_token": "<start_of_turn>",
                              "eot_token": "<end_of_turn>"},
        padding_side="right",
    )
    image_processor = Gemma3ImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    return Gemma3Processor(image_processor=image_processor, tokenizer=fast, chat_template=CHAT_TEMPLATE,
                           image_seq_length=MM_TOKENS)


def build_model(tok):
    ids = {t: tok.token_to_id(t) for t in SPECIALS}
    vision = SiglipVisionConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        image_size=IMAGE_SIZE, patch_size=PATCH, vision_use_head=False, layer_norm_eps=1e-6,
    )
    text = Gemma3TextConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=192, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=1, head_dim=16, sliding_window=32,
        query_pre_attn_scalar=16, max_position_embeddings=512, rms_norm_eps=1e-6,
        layer_types=["sliding_attention"] * 3 + ["full_attention"],
        rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
        },
        pad_token_id=ids["<pad>"], bos_token_id=ids["<bos>"], eos_token_id=[ids["<eos>"], ids["<end_of_turn>"]],
    )
    cfg = Gemma3Config(
        text_config=text.to_dict(), vision_config=vision.to_dict(), mm_tokens_per_image=MM_TOKENS,
        image_token_index=ids["<image_soft_token>"], boi_token_index=ids["<start_of_image>"],
        eoi_token_index=ids["<end_of_image>"],
    )
    torch.manual_seed(0)
    model = Gemma3ForConditionalGeneration(cfg).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.zero_()  # Gemma's norms scale by (1 + w); LayerNorm weights get 1 below
                if "layer_norm" in name or "post_layernorm" in name:
                    if name.endswith("weight"):
                        p.fill_(1.0)
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=gen) / p.shape[1] ** 0.5)
            elif "mm_input_projection_weight" in name:
                p.copy_(torch.randn(p.shape, generator=gen) / p.shape[0] ** 0.5)
            else:
                fan_in = p[0].numel() if p.dim() >= 2 else p.numel()
                p.copy_(torch.randn(p.shape, generator=gen) / fan_in ** 0.5)
    return model


def fixture_images():
    os.makedirs(os.path.join(FIXTURES, "images"), exist_ok=True)
    rng = np.random.default_rng(7)
    paths = {}
    # RGBA PNG, 50x40, noise with a drawn shape; alpha varies.
    a = rng.integers(0, 256, size=(40, 50, 4), dtype=np.uint8)
    img = Image.fromarray(a, "RGBA")
    ImageDraw.Draw(img).ellipse([5, 5, 30, 30], fill=(255, 0, 0, 255))
    paths["png"] = "images/noise_rgba.png"
    img.save(os.path.join(FIXTURES, paths["png"]))
    # Greyscale JPEG, 64x48.
    g = (np.add.outer(np.arange(48), np.arange(64)) * 2 % 256).astype(np.uint8)
    paths["jpeg"] = "images/gradient_grey.jpg"
    Image.fromarray(g, "L").save(os.path.join(FIXTURES, paths["jpeg"]), quality=90)
    # RGB WebP (lossless), 20x30: upsampled.
    w = rng.integers(0, 256, size=(30, 20, 3), dtype=np.uint8)
    paths["webp"] = "images/small.webp"
    Image.fromarray(w, "RGB").save(os.path.join(FIXTURES, paths["webp"]), lossless=True)
    # RGB PNG 32x32 exactly (no resize).
    e = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    paths["exact"] = "images/exact.png"
    Image.fromarray(e, "RGB").save(os.path.join(FIXTURES, paths["exact"]))
    return paths


def fixture_rows(p):
    def user(*items):
        return {"role": "user", "content": list(items)}

    def assistant(text):
        return {"role": "assistant", "content": [{"type": "text", "text": text}]}

    def image(key):
        return {"type": "image", "path": p[key]}

    def text(t):
        return {"type": "text", "text": t}

    return [
        [user(image("png"), text("What is in the image?")), assistant("A red circle.")],
        [{"role": "system", "content": [text("Answer briefly.")]}, user(text("Say hi!  ")), assistant(" Hi there, 42 times.")],
        [user(text("Compare"), image("jpeg"), text("with"), image("webp")), assistant("The first is grey.")],
        [user(image("exact"), text("Describe.")), assistant("Noise."), user(text("And its colour?")), assistant("Many colours.")],
        [user(text("caf\u00e9 \u65e5\u672c \U0001F600")), assistant("Bytes \u00e9.")],
    ]


def assistant_spans(text):
    """Character spans [start, end) trained on: after each '<start_of_turn>model\\n' up to and
    including the next '<end_of_turn>\\n'."""
    spans, at = [], 0
    head, tail = "<start_of_turn>model\n", "<end_of_turn>\n"
    while (s := text.find(head, at)) >= 0:
        start = s + len(head)
        e = text.find(tail, start)
        end = len(text) if e < 0 else e + len(tail)
        spans.append((start, end))
        at = end
    return spans


def make_fixtures(proc):
    paths = fixture_images()
    rows = fixture_rows(paths)
    os.makedirs(FIXTURES, exist_ok=True)
    with open(os.path.join(FIXTURES, "data.jsonl"), "w") as f:
        for r in rows:
            f.write(json.dumps({"messages": r}, ensure_ascii=False) + "\n")
    tensors, texts = {}, []
    cwd = os.getcwd()
    os.chdir(FIXTURES)  # image paths in the rows are relative to the dataset file
    try:
        for i, r in enumerate(rows):
            out = proc.apply_chat_template(r, tokenize=True, return_dict=True, return_tensors="pt")
            prompt = proc.apply_chat_template(r, tokenize=False)
            expanded = prompt.replace("<start_of_image>", proc.full_image_sequence)
            enc = proc.tokenizer(expanded, add_special_tokens=False, return_offsets_mapping=True)
            assert enc["input_ids"] == out["input_ids"][0].tolist(), f"row {i}: expansion differs"
            spans = assistant_spans(expanded)
            labels = [tid if any(s <= a and b <= e for s, e in spans) else -100
                      for tid, (a, b) in zip(enc["input_ids"], enc["offset_mapping"])]
            tensors[f"row{i}.input_ids"] = out["input_ids"][0].to(torch.int64)
            tensors[f"row{i}.attention_mask"] = out["attention_mask"][0].to(torch.int64)
            tensors[f"row{i}.token_type_ids"] = out["token_type_ids"][0].to(torch.int64)
            tensors[f"row{i}.labels"] = torch.tensor(labels, dtype=torch.int64)
            if "pixel_values" in out:
                tensors[f"row{i}.pixel_values"] = out["pixel_values"].to(torch.float32).contiguous()
            texts.append(expanded)
    finally:
        os.chdir(cwd)
    save_file(tensors, os.path.join(FIXTURES, "expected.safetensors"))
    # Token ids of a varied text sample (the tokenizer alone, BOS added by default).
    sample = "Hello,   world!\n\tTabs & digits 12345; caf\u00e9 \u65e5\u672c\u8a9e \U0001F600 <start_of_turn>user"
    ids = proc.tokenizer(sample)["input_ids"]
    with open(os.path.join(FIXTURES, "expected.json"), "w") as f:
        json.dump({"transformers": transformers.__version__, "texts": texts,
                   "tokenizer_sample": {"text": sample, "ids": ids}}, f, ensure_ascii=False, indent=1)


def main():
    tok = build_tokenizer()
    proc = build_processor(tok)
    model = build_model(tok)
    os.makedirs(MODEL_DIR, exist_ok=True)
    model.save_pretrained(MODEL_DIR)
    proc.save_pretrained(MODEL_DIR)
    # Round trip: what a user's script would load.
    again = transformers.AutoProcessor.from_pretrained(MODEL_DIR)
    assert again.image_seq_length == MM_TOKENS, again.image_seq_length
    make_fixtures(again)
    print("vocab", tok.get_vocab_size(), "params", sum(p.numel() for p in model.parameters()))
    for f in sorted(os.listdir(MODEL_DIR)):
        print(" ", f, os.path.getsize(os.path.join(MODEL_DIR, f)))


if __name__ == "__main__":
    main()
