#!/usr/bin/env python3
"""The last thing tools/gpu/run.sh prints: lapidary's kernel benchmarks (criterion's results)
next to torch's same work, and the LoRA training step next to HF transformers + PEFT, as one
Markdown table ready for benches/RESULTS.md.

    table.py --card NAME --criterion DIR --torch torch-kernels.jsonl \
             --step lapidary-step.json --step-ref hf-step.json [--backend llvm]
"""
import argparse
import json
import os


def criterion_rows(root):
    """criterion id without its device part -> (median seconds, flops or None, bytes or None)."""
    rows = {}
    for dirpath, _, files in os.walk(root):
        if os.path.basename(dirpath) != "new" or "estimates.json" not in files:
            continue
        with open(os.path.join(dirpath, "estimates.json")) as f:
            est = json.load(f)
        with open(os.path.join(dirpath, "benchmark.json")) as f:
            bench = json.load(f)
        parts = bench["full_id"].split("/")
        # group/device/function[/value]: drop the device, and "lapidary-" from matmul's function.
        key = [parts[0]] + [p.removeprefix("lapidary-") for p in parts[2:]]
        thr = bench.get("throughput") or {}
        rows["/".join(key)] = (est["median"]["point_estimate"] * 1e-9, thr.get("Elements"), thr.get("Bytes"))
    return rows


def rate(seconds, flops, bytes_):
    if seconds is None:
        return "—"
    if flops:
        return f"{flops / seconds / 1e12:.2f} TFLOP/s"
    if bytes_:
        return f"{bytes_ / seconds / 1e9:.1f} GB/s"
    return ""


def fmt_s(seconds):
    if seconds is None:
        return "—"
    if seconds >= 1:
        return f"{seconds:.3f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3f} ms"
    return f"{seconds * 1e6:.1f} µs"


def load_json(path):
    if not path or not os.path.exists(path):
        return None
    with open(path) as f:
        text = f.read().strip()
    if not text:
        return None
    # bench-step prints one JSON line, possibly after other output.
    return json.loads(text.splitlines()[-1])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--card", default="unknown card")
    p.add_argument("--backend", default="")
    p.add_argument("--criterion")
    p.add_argument("--torch")
    p.add_argument("--step")
    p.add_argument("--step-ref")
    a = p.parse_args()

    ours = criterion_rows(a.criterion) if a.criterion and os.path.isdir(a.criterion) else {}
    theirs = {}
    if a.torch and os.path.exists(a.torch):
        with open(a.torch) as f:
            for line in f:
                if line.strip():
                    r = json.loads(line)
                    theirs[r["id"]] = (r["seconds"], r.get("flops"), r.get("bytes"))
    backend = f", CUDA backend {a.backend}" if a.backend else ""
    print(f"\n### {a.card}{backend}\n")
    print("| kernel | lapidary | lapidary rate | torch | torch rate | lapidary / torch time |")
    print("|---|---:|---:|---:|---:|---:|")
    for key in sorted(set(ours) | set(theirs)):
        o, t = ours.get(key), theirs.get(key)
        work = (o or t)[1:]
        ratio = f"{o[0] / t[0]:.2f}x" if o and t else "—"
        print(
            f"| {key} | {fmt_s(o and o[0])} | {rate(o and o[0], *work)} | {fmt_s(t and t[0])} | "
            f"{rate(t and t[0], *work)} | {ratio} |"
        )

    s, r = load_json(a.step), load_json(a.step_ref)
    print("\n| LoRA step (all-linear r16, checkpointing, AdamW, batch 1) | adapter values | tokens | tokens/s | "
          "median step | peak GPU memory | first loss |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    gib = 1024**3
    if s:
        print(
            f"| lapidary (bf16 base, f32 compute) | {s['trainable']:,} | {s['tokens']} | {s['tokens_per_s']:.1f} | "
            f"{fmt_s(s['median_step_s'])} | {s['peak_reserved_bytes'] / gib:.2f} GiB reserved | {s['first_loss']:.4f} |"
        )
    else:
        print("| lapidary | — | — | did not finish | — | — | — |")
    if r:
        print(
            f"| HF transformers + PEFT ({r.get('attn_implementation', '?')}, bf16, torch {r.get('torch', '?')}) | "
            f"{r['trainable']:,} | {r['tokens']} | {r['tokens_per_s']:.1f} | {fmt_s(r['median_step_s'])} | "
            f"{r['peak_reserved_bytes'] / gib:.2f} GiB reserved ({r['peak_allocated_bytes'] / gib:.2f} allocated) | "
            f"{r['first_loss']:.4f} |"
        )
    else:
        print("| HF transformers + PEFT | — | — | did not finish | — | — | — |")


if __name__ == "__main__":
    main()
