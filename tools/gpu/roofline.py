#!/usr/bin/env python3
"""Roofline of one LoRA training step on the 4B shape that tools/gpu/run.sh measures.

The step: Gemma 3 4B (text 2560/10240, 34 layers, 8 heads / 4 kv of 256, vocab 262,208) with
SigLIP (1152/4304, 27 layers, 16 heads, 896 px -> 4,096 patches), bf16 base, batch 1, 2,048
tokens (one image block of 256), LoRA r16 on every linear of both towers, gradient
checkpointing per layer (each layer's forward runs twice), AdamW on the adapters.

For each kernel class: FLOPs and bytes moved as the kernels are written today (lapidary) and
as HF transformers + PEFT runs the same step (SDPA attention, logits materialized), and the
H200 lower bound max(FLOPs / peak, bytes / bandwidth). Counts are analytic, from the shapes;
they are the budget a measurement is judged against, not a measurement.

    python3 tools/gpu/roofline.py            # Markdown table
"""

PEAK_BF16 = 989e12  # H200 SXM dense bf16 tensor-core FLOP/s
PEAK_F32 = 67e12  # H200 SXM f32 (non-tensor) FLOP/s
BANDWIDTH = 4.8e12  # H200 HBM3e bytes/s

T = 2048  # text tokens
TEXT = dict(hidden=2560, inter=10240, layers=34, heads=8, kv=4, hd=256, vocab=262208)
VIS = dict(hidden=1152, inter=4304, layers=27, heads=16, patches=4096, patch=14)
R = 16  # LoRA rank
BF16, F32 = 2, 4


def text_linears():
    h, i, hd = TEXT["hidden"], TEXT["inter"], TEXT["hd"]
    q, kv = TEXT["heads"] * hd, TEXT["kv"] * hd
    return [(h, q), (h, kv), (h, kv), (q, h), (h, i), (h, i), (i, h)]


def vis_linears():
    h, i = VIS["hidden"], VIS["inter"]
    return [(h, h)] * 4 + [(h, i), (i, h)]


def rows():
    out = []
    # Frozen base linears: forward, the checkpoint's recompute, and dX in backward (no dW).
    for name, lin, n_tok, layers in [
        ("text linears (frozen bf16 base)", text_linears(), T, TEXT["layers"]),
        ("vision linears (frozen bf16 base)", vis_linears(), VIS["patches"], VIS["layers"]),
    ]:
        params = sum(a * b for a, b in lin) * layers
        acts = sum(a + b for a, b in lin) * layers * n_tok * BF16
        flops = 3 * 2 * n_tok * params
        # Weights read 3 times, activations in and out 3 times.
        bytes_ = 3 * params * BF16 + 3 * acts
        out.append((name, flops, bytes_, flops, bytes_, PEAK_BF16))
    # LoRA adapters (f32 weights): x·A, (x·A)·B forward twice, dX and dW of both in backward.
    lora_params = sum(R * (a + b) for a, b in text_linears()) * TEXT["layers"] + sum(
        R * (a + b) for a, b in vis_linears()
    ) * VIS["layers"]
    lora_tok = (sum(R * (a + b) for a, b in text_linears()) * TEXT["layers"] * T
                + sum(R * (a + b) for a, b in vis_linears()) * VIS["layers"] * VIS["patches"])
    lora_flops = 2 * lora_tok * 4  # fwd, recompute, dX, dW
    lora_bytes = 4 * lora_tok / R * F32  # the adapter's input read and its output written, f32
    out.append(("LoRA adapters (f32)", lora_flops, lora_bytes, lora_flops, lora_bytes, PEAK_F32))
    # Attention: scores and P·V over every (query, key) pair as the masked kernels compute them.
    for name, n, heads, hd, layers in [
        ("text attention", T, TEXT["heads"], TEXT["hd"], TEXT["layers"]),
        ("vision attention", VIS["patches"], VIS["heads"], VIS["hidden"] // VIS["heads"], VIS["layers"]),
    ]:
        product = 2 * n * n * heads * hd * layers  # one [n, n] x hd product over every layer
        # Both fused, nothing of size n x n stored. Products: forward 2 (S, P.V), recomputed 2.
        # SDPA's flash backward 5 (S, dP, dV, dK, dQ); lapidary's tiled backward 7 (its dQ
        # kernel and its dK/dV kernel each recompute S and dP, so that neither needs atomics).
        lap_flops, hf_flops = product * 11, product * 9
        # Bytes: passes over [n, heads, hd] bf16 tensors. SDPA: Q, K, V, O forward and again
        # recomputed, Q, K, V, O, dO, dQ, dK, dV backward (16). lapidary: the same forward (8),
        # delta reads O and dO, the dQ kernel Q, dO, K, V and writes dQ, the dK/dV kernel K, V,
        # Q, dO and writes dK, dV (13): 21.
        # lapidary's activations are f32: its attention reads f32 and, as run.sh runs the step
        # (LAPIDARY_ATTENTION_PRODUCTS=bf16), multiplies in bf16 on tensor cores (with f32
        # products it would be bound by the f32 peak: 96 and 171 ms). HF's model runs in bf16.
        io = n * heads * hd * layers
        out.append((name, lap_flops, io * F32 * 21, hf_flops, io * BF16 * 16, PEAK_BF16))
    # Output head + cross-entropy: logits [T, vocab] against the tied embedding.
    h, v = TEXT["hidden"], TEXT["vocab"]
    head_flops = 2 * T * h * v
    # lapidary: fused and chunked (logits never whole): forward, and backward recomputes each
    # chunk's logits; the embedding is read for each of the 3 products.
    lap_head_bytes = 3 * h * v * BF16
    # HF: logits materialized in bf16, upcast to f32 for the loss, their gradient in f32 and bf16.
    hf_head_bytes = 2 * h * v * BF16 + T * v * (BF16 * 2 + F32 * 4)
    out.append(("output head + cross-entropy", 3 * head_flops, lap_head_bytes, 2 * head_flops,
                hf_head_bytes, PEAK_BF16))
    # Row kernels (norms, RoPE, GeGLU/GELU, residual adds, casts): memory-bound passes.
    text_act = T * TEXT["hidden"] * BF16
    text_mlp = T * TEXT["inter"] * BF16
    vis_act = VIS["patches"] * VIS["hidden"] * BF16
    vis_mlp = VIS["patches"] * VIS["inter"] * BF16
    per_pass = (TEXT["layers"] * (16 * text_act + 6 * text_mlp)
                + VIS["layers"] * (14 * vis_act + 4 * vis_mlp))
    row_bytes = 3 * per_pass  # forward, recompute, backward
    out.append(("row kernels (norms, RoPE, GeGLU, adds)", 0, row_bytes, 0, row_bytes, PEAK_F32))
    # Optimizer: AdamW over the adapters (f32 weight, grad, two moments, read and written).
    adam = lora_params * F32 * 7
    out.append(("AdamW on the adapters", 0, adam, 0, adam, PEAK_F32))
    return out


def bound(flops, bytes_, peak):
    return max(flops / peak, bytes_ / BANDWIDTH)


def main():
    print("| kernel class | lapidary GFLOP | lapidary GB | lapidary bound (ms) | HF+PEFT GFLOP | HF+PEFT GB | HF+PEFT bound (ms) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    tot = [0.0] * 6
    for name, lf, lb, hf, hb, peak in rows():
        lt, ht = bound(lf, lb, peak), bound(hf, hb, peak)
        for j, x in enumerate([lf, lb, lt, hf, hb, ht]):
            tot[j] += x
        print(f"| {name} | {lf / 1e9:,.0f} | {lb / 1e9:,.1f} | {lt * 1e3:,.1f} | {hf / 1e9:,.0f} | {hb / 1e9:,.1f} | {ht * 1e3:,.1f} |")
    print(f"| **total** | {tot[0] / 1e9:,.0f} | {tot[1] / 1e9:,.1f} | **{tot[2] * 1e3:,.1f}** | {tot[3] / 1e9:,.0f} | "
          f"{tot[4] / 1e9:,.1f} | **{tot[5] * 1e3:,.1f}** |")
    print(f"\nH200: {PEAK_BF16 / 1e12:.0f} TFLOP/s bf16 dense, {BANDWIDTH / 1e12:.1f} TB/s; "
          f"{T} tokens -> lower bounds of {T / tot[2]:,.0f} (lapidary as written) and "
          f"{T / tot[5]:,.0f} (HF+PEFT) tokens/s.")


if __name__ == "__main__":
    main()
