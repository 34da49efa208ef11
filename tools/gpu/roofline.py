#!/usr/bin/env python3
"""Roofline of one LoRA training step on an H200, for the shapes tools/gpu/run.sh measures or
that Gemma 4 users train.

`gemma3-4b` (default): Gemma 3 4B (text 2560/10240, 34 layers, 8 heads / 4 kv of 256, vocab
262,208) with SigLIP (1152/4304, 27 layers, 16 heads, 896 px -> 4,096 patches), 2,048 tokens (one
image block of 256).

`gemma4-31b`: Gemma 4 31B (google/gemma-4-31B-it's config: text 5376/21504, 60 layers — 50
sliding at head dim 256 with 16 kv heads and a 1,024-token window, 10 full at head dim 512 with 4
kv heads and K = V — 32 query heads, vocab 262,144) with its vision tower (1152/4304, 27 layers,
16 heads of 72, 16-px patches pooled 3 x 3), 2,048 tokens with one image at the 280-soft-token
budget (2,520 patches).

Both: bf16 base, batch 1, LoRA r16 on every linear of both towers, gradient checkpointing per
layer (each layer's forward runs twice), AdamW on the adapters.

For each kernel class: FLOPs and bytes moved as the kernels are written today (lapidary) and
as HF transformers + PEFT runs the same step (SDPA attention, logits materialized), and the
H200 lower bound max(FLOPs / peak, bytes / bandwidth). Counts are analytic, from the shapes;
they are the budget a measurement is judged against, not a measurement.

    python3 tools/gpu/roofline.py [--shape gemma3-4b|gemma4-31b]   # Markdown table
"""
import argparse

PEAK_BF16 = 989e12  # H200 SXM dense bf16 tensor-core FLOP/s
PEAK_F32 = 67e12  # H200 SXM f32 (non-tensor) FLOP/s
BANDWIDTH = 4.8e12  # H200 HBM3e bytes/s
R = 16  # LoRA rank
BF16, F32 = 2, 4


def causal_pairs(n, window=None):
    """(query, key) pairs a causal mask (within `window` keys) leaves visible."""
    if window is None or window >= n:
        return n * (n + 1) // 2
    return window * (window + 1) // 2 + (n - window) * window


def gemma3_4b():
    t = 2048
    h, i, hd, heads, kv = 2560, 10240, 256, 8, 4
    q, k = heads * hd, kv * hd
    text = dict(linears=[(h, q), (h, k), (h, k), (q, h), (h, i), (h, i), (i, h)], heads=heads, hd=hd,
                pairs=t * t, lap_products=11, lap_passes=21)
    vh, vi, patches = 1152, 4304, 4096
    vision = dict(linears=[(vh, vh)] * 4 + [(vh, vi), (vi, vh)], heads=16, hd=vh // 16, pairs=patches * patches,
                  lap_products=11, lap_passes=21)
    # Every pair of the n x n square is counted (an upper bound of what the masked kernels do).
    return dict(tokens=t, patches=patches, hidden=h, inter=i, vocab=262208, vis_hidden=vh, vis_inter=vi,
                text_layers=[text] * 34, vision_layers=[vision] * 27,
                attention_note="every (query, key) pair counted")


def gemma4_31b():
    t = 2048
    h, i, heads = 5376, 21504, 32
    sliding = dict(
        linears=[(h, heads * 256), (h, 16 * 256), (h, 16 * 256), (heads * 256, h), (h, i), (h, i), (i, h)],
        heads=heads, hd=256, pairs=causal_pairs(t, 1024), lap_products=11, lap_passes=21)
    # Full layers: K = V (no v_proj); head dim 512, where lapidary's tiled backward runs dK and dV
    # in two passes (the scores recomputed: 12 products; K, Q and dO read again: 25 passes).
    full = dict(linears=[(h, heads * 512), (h, 4 * 512), (heads * 512, h), (h, i), (h, i), (i, h)],
                heads=heads, hd=512, pairs=causal_pairs(t), lap_products=12, lap_passes=25)
    layers = [full if (n + 1) % 6 == 0 else sliding for n in range(60)]
    vh, vi, patches = 1152, 4304, 2520
    # The vision tower attends bidirectionally within each image.
    vision = dict(linears=[(vh, vh)] * 4 + [(vh, vi), (vh, vi), (vi, vh)], heads=16, hd=72,
                  pairs=patches * patches, lap_products=11, lap_passes=21)
    return dict(tokens=t, patches=patches, hidden=h, inter=i, vocab=262144, vis_hidden=vh, vis_inter=vi,
                text_layers=layers, vision_layers=[vision] * 27,
                attention_note="causal and windowed pairs as the masks leave them (images: all pairs)")


SHAPES = {"gemma3-4b": gemma3_4b, "gemma4-31b": gemma4_31b}


def rows(s):
    out = []
    t, patches = s["tokens"], s["patches"]
    # Frozen base linears: forward, the checkpoint's recompute, and dX in backward (no dW).
    for name, layers, n_tok in [
        ("text linears (frozen bf16 base)", s["text_layers"], t),
        ("vision linears (frozen bf16 base)", s["vision_layers"], patches),
    ]:
        params = sum(a * b for layer in layers for a, b in layer["linears"])
        acts = sum(a + b for layer in layers for a, b in layer["linears"]) * n_tok * BF16
        flops = 3 * 2 * n_tok * params
        # Weights read 3 times, activations in and out 3 times.
        bytes_ = 3 * params * BF16 + 3 * acts
        out.append((name, flops, bytes_, flops, bytes_, PEAK_BF16))
    # LoRA adapters (f32 weights): x·A, (x·A)·B forward twice, dX and dW of both in backward.
    lora_params = sum(R * (a + b) for layers in (s["text_layers"], s["vision_layers"])
                      for layer in layers for a, b in layer["linears"])
    lora_tok = sum(R * (a + b) * n_tok for layers, n_tok in ((s["text_layers"], t), (s["vision_layers"], patches))
                   for layer in layers for a, b in layer["linears"])
    lora_flops = 2 * lora_tok * 4  # fwd, recompute, dX, dW
    lora_bytes = 4 * lora_tok / R * F32  # the adapter's input read and its output written, f32
    out.append(("LoRA adapters (f32)", lora_flops, lora_bytes, lora_flops, lora_bytes, PEAK_F32))
    # Attention: scores and P·V over the (query, key) pairs each layer computes.
    for name, layers, n in [("text attention", s["text_layers"], t), ("vision attention", s["vision_layers"], patches)]:
        lap_flops = hf_flops = lap_bytes = hf_bytes = 0
        for layer in layers:
            product = 2 * layer["pairs"] * layer["heads"] * layer["hd"]  # one product over the pairs
            # Both fused, nothing of size n x n stored. Products: forward 2 (S, P.V), recomputed
            # 2. SDPA's flash backward 5 (S, dP, dV, dK, dQ); lapidary's tiled backward 7 (its dQ
            # kernel and its dK/dV kernel each recompute S and dP, so that neither needs atomics;
            # 8 at head dim 512, whose dK and dV run apart).
            lap_flops += product * layer["lap_products"]
            hf_flops += product * 9
            # Bytes: passes over [n, heads, hd] tensors. SDPA: Q, K, V, O forward and again
            # recomputed, Q, K, V, O, dO, dQ, dK, dV backward (16), bf16. lapidary: the same
            # forward (8), delta reads O and dO, the dQ kernel Q, dO, K, V and writes dQ, the
            # dK/dV kernel K, V, Q, dO and writes dK, dV (13): 21 (25 with dK and dV apart), f32
            # (its activations are f32; as run.sh runs the step, LAPIDARY_ATTENTION_PRODUCTS=bf16,
            # the products run in bf16 on tensor cores). HF's model runs in bf16.
            io = n * layer["heads"] * layer["hd"]
            lap_bytes += io * F32 * layer["lap_passes"]
            hf_bytes += io * BF16 * 16
        out.append((name, lap_flops, lap_bytes, hf_flops, hf_bytes, PEAK_BF16))
    # Output head + cross-entropy: logits [T, vocab] against the tied embedding.
    h, v = s["hidden"], s["vocab"]
    head_flops = 2 * t * h * v
    # lapidary: fused and chunked (logits never whole): forward, and backward recomputes each
    # chunk's logits; the embedding is read for each of the 3 products.
    lap_head_bytes = 3 * h * v * BF16
    # HF: logits materialized in bf16, upcast to f32 for the loss, their gradient in f32 and bf16.
    hf_head_bytes = 2 * h * v * BF16 + t * v * (BF16 * 2 + F32 * 4)
    out.append(("output head + cross-entropy", 3 * head_flops, lap_head_bytes, 2 * head_flops,
                hf_head_bytes, PEAK_BF16))
    # Row kernels (norms, RoPE, GeGLU/GELU, residual adds, casts): memory-bound passes.
    text_act, text_mlp = t * s["hidden"] * BF16, t * s["inter"] * BF16
    vis_act, vis_mlp = patches * s["vis_hidden"] * BF16, patches * s["vis_inter"] * BF16
    per_pass = (len(s["text_layers"]) * (16 * text_act + 6 * text_mlp)
                + len(s["vision_layers"]) * (14 * vis_act + 4 * vis_mlp))
    row_bytes = 3 * per_pass  # forward, recompute, backward
    out.append(("row kernels (norms, RoPE, GeGLU, adds)", 0, row_bytes, 0, row_bytes, PEAK_F32))
    # Optimizer: AdamW over the adapters (f32 weight, grad, two moments, read and written).
    adam = lora_params * F32 * 7
    out.append(("AdamW on the adapters", 0, adam, 0, adam, PEAK_F32))
    return out


def bound(flops, bytes_, peak):
    return max(flops / peak, bytes_ / BANDWIDTH)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=sorted(SHAPES), default="gemma3-4b")
    s = SHAPES[p.parse_args().shape]()
    print("| kernel class | lapidary GFLOP | lapidary GB | lapidary bound (ms) | HF+PEFT GFLOP | HF+PEFT GB | HF+PEFT bound (ms) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    tot = [0.0] * 6
    for name, lf, lb, hf, hb, peak in rows(s):
        lt, ht = bound(lf, lb, peak), bound(hf, hb, peak)
        for j, x in enumerate([lf, lb, lt, hf, hb, ht]):
            tot[j] += x
        print(f"| {name} | {lf / 1e9:,.0f} | {lb / 1e9:,.1f} | {lt * 1e3:,.1f} | {hf / 1e9:,.0f} | {hb / 1e9:,.1f} | {ht * 1e3:,.1f} |")
    print(f"| **total** | {tot[0] / 1e9:,.0f} | {tot[1] / 1e9:,.1f} | **{tot[2] * 1e3:,.1f}** | {tot[3] / 1e9:,.0f} | "
          f"{tot[4] / 1e9:,.1f} | **{tot[5] * 1e3:,.1f}** |")
    t = s["tokens"]
    print(f"\nH200: {PEAK_BF16 / 1e12:.0f} TFLOP/s bf16 dense, {BANDWIDTH / 1e12:.1f} TB/s; "
          f"{t} tokens -> lower bounds of {t / tot[2]:,.0f} (lapidary as written) and "
          f"{t / tot[5]:,.0f} (HF+PEFT) tokens/s. Attention: {s['attention_note']}.")


if __name__ == "__main__":
    main()
