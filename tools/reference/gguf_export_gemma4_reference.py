#!/usr/bin/env python3
"""What llama.cpp's own converter (`convert_hf_to_gguf.py`, and with `--mmproj` the vision
projector file) writes for the tiny Gemma 4 fixtures (tests/fixtures/tiny-gemma4-{dense,e}/model):
for each file, every metadata key with its GGUF type and value (long arrays as their length, first
and last items), and every tensor's name, shape (row-major) and type ->
tests/fixtures/gguf-export/listing-gemma4.json. `lapidary export-gguf` is tested against it.
Small; the converted files are not committed.

The converter reads a Gemma 4 tokenizer with `LlamaHfVocab`, which accepts only a BPE
tokenizer.json with byte fallback and a `Sequence` decoder (as Gemma 4 releases ship it). The
fixtures' character-level tokenizer has neither; the copy given to the converter gets them
(neither changes the vocabulary, the merges or the special tokens, which are what the GGUF holds).

llama.cpp's converter comes from the llama-cpp-python source distribution on PyPI (it vendors
llama.cpp whole; 0.3.36 converts Gemma 4):

    .venv/bin/pip install -r tools/reference/requirements.txt gguf
    curl -sL $(sdist url of llama-cpp-python 0.3.36) | tar xz -C /tmp
    .venv/bin/python tools/reference/gguf_export_gemma4_reference.py /tmp/llama_cpp_python-0.3.36/vendor/llama.cpp
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

from gguf_export_reference import listing  # the same listing as Gemma 3's (this directory)

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
OUT = os.path.join(FIXTURES, "gguf-export", "listing-gemma4.json")


def llama_style_tokenizer(path):
    t = json.load(open(path, encoding="utf-8"))
    t["model"]["byte_fallback"] = True
    t["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
        {"type": "ByteFallback"},
        {"type": "Fuse"},
    ]}
    json.dump(t, open(path, "w", encoding="utf-8"), ensure_ascii=False)


def main():
    llama = sys.argv[1]
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ["dense", "e"]:
            model = os.path.join(tmp, f"tiny-gemma4-{kind}")
            shutil.copytree(os.path.join(FIXTURES, f"tiny-gemma4-{kind}", "model"), model)
            llama_style_tokenizer(os.path.join(model, "tokenizer.json"))
            for part, extra in [("text", []), ("mmproj", ["--mmproj"])]:
                for outtype in ["f16", "q8_0"]:
                    dst = os.path.join(tmp, f"{kind}-{part}-{outtype}.gguf")
                    subprocess.run([sys.executable, os.path.join(llama, "convert_hf_to_gguf.py"), model,
                                    "--outfile", dst, "--outtype", outtype, *extra], check=True)
                    out[f"{kind}-{part}-{outtype}"] = listing(dst)
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1, ensure_ascii=False, sort_keys=True)
    print("wrote", OUT)


if __name__ == "__main__":
    main()
