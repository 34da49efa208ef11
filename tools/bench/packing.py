#!/usr/bin/env python3
"""Packed vs padded training on the bundled tiny model, measured with `lapidary train`.

Two datasets: the demo's (one image and a short caption a row, lengths close together) and a
mixed-length one built from the demo's images (0-3 images a row, answers of 1-60 words). Each is
trained for a few steps padded (4 rows a micro-batch), packed (4 packed rows of up to max_len
tokens) and padded again with as many rows a micro-batch as the packed run carried
conversations (the same work per step, so launch overhead does not favour packing); the figures
come from the run's metrics.jsonl: padding fraction, real tokens/s and peak resident memory
(which holds the CPU runtime's device memory). Prints a Markdown table.

Usage: tools/bench/packing.py [--lapidary target/release/lapidary] [--steps 8]
"""

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WORDS = "red green blue yellow circle square triangle small large bright dark left right top bottom".split()


def run(cmd):
    print("$", " ".join(str(c) for c in cmd), file=sys.stderr)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def mixed_dataset(demo_data: Path, out: Path, rows: int, seed: int) -> Path:
    rng = random.Random(seed)
    images = sorted(p.name for p in (demo_data / "images").glob("*.png"))
    path = out / "mixed.jsonl"
    with open(path, "w") as f:
        for _ in range(rows):
            n_images = rng.choice([0, 1, 1, 2, 3])
            content = [{"type": "image", "path": f"images/{rng.choice(images)}"} for _ in range(n_images)]
            content.append({"type": "text", "text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 12)))})
            answer = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 60)))
            row = {"messages": [{"role": "user", "content": content},
                                {"role": "assistant", "content": [{"type": "text", "text": answer}]}]}
            f.write(json.dumps(row) + "\n")
    return path


def train(lapidary: Path, data: Path, out: Path, packing: bool, steps: int, max_len: int, rows: int = 4) -> dict:
    run([lapidary, "train", "--model", ROOT / "assets/tiny-vlm", "--data", data, "--output-dir", out,
         "--max-steps", str(steps), "--micro-batch-size", str(rows), "--grad-accum-steps", "1",
         "--max-len", str(max_len), "--eval-fraction", "0", "--warmup-steps", "0",
         "--packing", "true" if packing else "false", "--overwrite-output-dir", "true"])
    records = [json.loads(l) for l in open(out / "metrics.jsonl") if l.strip()]
    steps_ = [r for r in records if "tokens_per_s" in r][1:]  # the first step compiles kernels
    return {
        "padding": statistics.mean(r["padding"] for r in steps_),
        "tokens_per_step": statistics.mean(r["tokens"] for r in steps_),
        "tokens_per_s": statistics.median(r["tokens_per_s"] for r in steps_),
        "rss_mib": max(r["rss_mib"] for r in steps_),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lapidary", type=Path, default=ROOT / "target/release/lapidary")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--max-len", type=int, default=256)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run([args.lapidary, "demo", "--steps", "1", "--no-compare", "--out", tmp / "demo"])
        demo_data = tmp / "demo" / "data"
        datasets = {"demo": demo_data / "train.jsonl", "mixed": mixed_dataset(demo_data, demo_data, 256, 7)}
        print("| data | rows | padding | real tokens/step | tokens/s | peak RSS MiB |")
        print("|---|---|---:|---:|---:|---:|")
        def show(name, rows, r):
            print(f"| {name} | {rows} | {r['padding']:.1%} | {r['tokens_per_step']:.0f} | "
                  f"{r['tokens_per_s']:.0f} | {r['rss_mib']:.0f} |", flush=True)

        for name, data in datasets.items():
            padded = train(args.lapidary, data, tmp / f"run-{name}-padded", False, args.steps, args.max_len)
            show(name, "padded, 4 rows", padded)
            packed = train(args.lapidary, data, tmp / f"run-{name}-packed", True, args.steps, args.max_len)
            show(name, "packed, 4 rows", packed)
            rows = max(4, round(4 * packed["tokens_per_step"] / padded["tokens_per_step"]))
            same = train(args.lapidary, data, tmp / f"run-{name}-wide", False, args.steps, args.max_len, rows)
            show(name, f"padded, {rows} rows", same)


if __name__ == "__main__":
    main()
