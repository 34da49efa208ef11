#!/usr/bin/env python3
"""The PyTorch half of tools/gpu/run.sh: the same work as lapidary's benchmarks, on the same card.

    torch_bench.py kernels    --device cuda --out torch-kernels.jsonl
    torch_bench.py make-model --shape 4b --device cuda --out DIR   (random weights + a batch file)
    torch_bench.py lora-step  --model DIR --device cuda --out hf-step.json
    torch_bench.py make-text-batch --vocab 262144 --tokens 512 --out text512.safetensors
    torch_bench.py lora-step  --gguf FILE.gguf --batch text512.safetensors --device cpu --out hf-step.json

`kernels` times torch's versions of benches/kernels.rs (same shapes, same work counts; ids as
criterion's without the device). `make-model` writes a RANDOM Gemma 3 VLM of the 4B shape (or a
small or tiny one, for the CPU; or `small-gemma4`, a small Gemma 4) as an HF checkpoint in bf16 and
`batch.safetensors`
(one row: one image, the rest text, labels on the text after the image) in the form
`lapidary eval` / `lapidary bench-step` read. `lora-step` times HF transformers + PEFT LoRA steps
on that model and batch (or a GGUF text model and a text batch): all-linear r16, gradient
checkpointing, AdamW, bf16 on GPUs and f32 on the CPU (`--dtype`). Nothing is downloaded. Runs
on the CPU too (`--device cpu`): the `small` and `small-gemma4` shapes and the 270M GGUF are
`cargo xtask bench`'s CPU step comparison.
"""
import argparse
import json
import os
import statistics
import time

import torch
import torch.nn.functional as F

# Gemma 3 4B (google/gemma-3-4b-it's config), weights random.
SHAPES = {
    "4b": dict(
        text=dict(
            hidden_size=2560,
            intermediate_size=10240,
            num_hidden_layers=34,
            num_attention_heads=8,
            num_key_value_heads=4,
            head_dim=256,
            query_pre_attn_scalar=256,
            vocab_size=262208,
            sliding_window=1024,
            rope_theta=1_000_000.0,
            rope_local_base_freq=10_000.0,
            rope_scaling={"rope_type": "linear", "factor": 8.0},
            max_position_embeddings=131072,
        ),
        vision=dict(
            hidden_size=1152,
            intermediate_size=4304,
            num_hidden_layers=27,
            num_attention_heads=16,
            image_size=896,
            patch_size=14,
            vision_use_head=False,
        ),
        mm_tokens_per_image=256,
        boi_token_index=255999,
        eoi_token_index=256000,
        image_token_index=262144,
        tokens=2048,
    ),
    # A small VLM for the CPU step comparison (`cargo xtask bench`): ~50M parameters, 6 + 6
    # layers, one 224-px image (256 patches pooled to 64 tokens), 512 tokens.
    "small": dict(
        text=dict(
            hidden_size=512,
            intermediate_size=2048,
            num_hidden_layers=6,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=128,
            query_pre_attn_scalar=128,
            vocab_size=32768,
            sliding_window=128,
            rope_theta=1_000_000.0,
            rope_local_base_freq=10_000.0,
            rope_scaling={"rope_type": "linear", "factor": 8.0},
            max_position_embeddings=4096,
        ),
        vision=dict(
            hidden_size=384,
            intermediate_size=1536,
            num_hidden_layers=6,
            num_attention_heads=6,
            image_size=224,
            patch_size=14,
            vision_use_head=False,
        ),
        mm_tokens_per_image=64,
        boi_token_index=32000,
        eoi_token_index=32001,
        image_token_index=32002,
        tokens=512,
    ),
    # A small Gemma 4 VLM for the CPU step comparison, shaped as the dense Gemma 4 (the 31B's
    # architecture) is: five sliding layers (head dim 128) and a full one (head dim 512, one KV
    # head, V from the K projection, proportional partial RoPE), final logit softcapping; a
    # vision tower of 16-px patches pooled 3 x 3 with a learned 2D position table and 2D RoPE;
    # one 384 x 384 image (576 patches in a 630-patch slot, 64 soft tokens), 512 tokens.
    "small-gemma4": dict(
        family="gemma4",
        text=dict(
            hidden_size=512,
            intermediate_size=2048,
            num_hidden_layers=6,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=128,
            global_head_dim=512,
            num_global_key_value_heads=1,
            attention_k_eq_v=True,
            vocab_size=32768,
            sliding_window=128,
            max_position_embeddings=4096,
            final_logit_softcapping=30.0,
            hidden_size_per_layer_input=0,
            use_bidirectional_attention="vision",
            layer_types=["sliding_attention"] * 5 + ["full_attention"],
            rope_parameters={
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1000000.0},
            },
        ),
        vision=dict(
            hidden_size=384,
            intermediate_size=1536,
            num_hidden_layers=6,
            num_attention_heads=6,
            num_key_value_heads=6,
            head_dim=64,
            patch_size=16,
            pooling_kernel_size=3,
            position_embedding_size=1024,
        ),
        image_px=384,
        max_soft_tokens=70,
        boi_token_index=32000,
        eoi_token_index=32001,
        image_token_index=32002,
        tokens=512,
    ),
    # The same structure (sliding and full layers, linear RoPE scaling on the full ones), small
    # enough for a CPU run of the whole script.
    "tiny": dict(
        text=dict(
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=6,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=32,
            query_pre_attn_scalar=32,
            vocab_size=4100,
            sliding_window=16,
            rope_theta=1_000_000.0,
            rope_local_base_freq=10_000.0,
            rope_scaling={"rope_type": "linear", "factor": 8.0},
            max_position_embeddings=1024,
        ),
        vision=dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=64,
            patch_size=8,
            vision_use_head=False,
        ),
        mm_tokens_per_image=16,
        boi_token_index=4000,
        eoi_token_index=4001,
        image_token_index=4002,
        tokens=96,
    ),
}


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_fn(fn, device, min_time=0.5, repeats=5):
    """Median seconds of one call: warm-up, then `repeats` timed batches of calls."""
    for _ in range(3):
        fn()
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    once = max(time.perf_counter() - t0, 1e-6)
    n = max(1, int(min_time / repeats / once))
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        sync(device)
        samples.append((time.perf_counter() - t0) / n)
    return statistics.median(samples)


def values(shape, seed, dtype, device):
    g = torch.Generator(device="cpu").manual_seed(seed)
    return (torch.rand(shape, generator=g) * 2 - 1).to(device=device, dtype=dtype)


def kernels(args):
    dev = args.device
    torch.backends.cuda.matmul.allow_tf32 = False  # f32 means f32, as lapidary computes it
    torch.backends.cudnn.allow_tf32 = False
    sizes = [int(s) for s in os.environ.get("LAPIDARY_BENCH_MATMUL", "256,512,1024,2048").split(",") if s.strip()]
    rows = []

    def record(bid, seconds, flops=None, bytes_=None):
        rows.append(dict(id=bid, seconds=seconds, flops=flops, bytes=bytes_))
        rate = f"{flops / seconds / 1e12:.2f} TFLOP/s" if flops else f"{bytes_ / seconds / 1e9:.1f} GB/s"
        print(f"torch {bid:<44} {seconds * 1e3:10.4f} ms  {rate}", flush=True)

    for s in sizes:
        for name, dt in [("F32", torch.float32), ("BF16", torch.bfloat16)]:
            a, b = values((s, s), 1, dt, dev), values((s, s), 2, dt, dev)
            record(f"matmul/{name}/{s}", time_fn(lambda: a @ b, dev), flops=2 * s**3)
    bh, h, hkv, t, d = 1, 4, 1, 512, 256
    q = values((bh, h, t, d), 3, torch.float32, dev)
    k = values((bh, hkv, t, d), 4, torch.float32, dev).expand(bh, h, t, d)
    v = values((bh, hkv, t, d), 5, torch.float32, dev).expand(bh, h, t, d)
    record(
        f"attention/forward/F32/h{h}-kv{hkv}-t{t}-d{d}",
        time_fn(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.0625), dev),
        flops=4 * bh * h * t * t * d,
    )
    scores = values((bh, h, t, t), 6, torch.float32, dev)
    i = torch.arange(t, device=dev)
    banned = (i[None, :] > i[:, None]) | (i[:, None] - i[None, :] >= 128)
    record(
        f"attention/masked_softmax/F32/{h}x{t}x{t}",
        time_fn(lambda: (scores * 0.0625).masked_fill(banned, float("-inf")).softmax(-1), dev),
        bytes_=2 * scores.numel() * 4,
    )
    rows_, cols = 2048, 640
    for name, dt in [("F32", torch.float32), ("BF16", torch.bfloat16)]:
        x = values((rows_, cols), 7, dt, dev)
        w = values((cols,), 8, dt, dev)

        def rms():
            xf = x.float()
            y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6) * (1.0 + w.float())
            return y.to(dt)

        record(f"norm-loss/rms_norm/{name}/{rows_}x{cols}", time_fn(rms, dev), bytes_=2 * x.numel() * x.element_size())
    n, vocab = 256, 32768
    logits = values((n, vocab), 9, torch.float32, dev)
    labels = (torch.arange(n, device=dev) * 7919) % vocab
    record(
        f"norm-loss/cross_entropy/F32/{n}x{vocab}",
        time_fn(lambda: F.cross_entropy(logits, labels), dev),
        bytes_=logits.numel() * 4,
    )
    x = values((1 << 22,), 10, torch.float32, dev)
    record("norm-loss/gelu_tanh/F32/4M", time_fn(lambda: F.gelu(x, approximate="tanh"), dev), bytes_=2 * x.numel() * 4)
    with open(args.out, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def gemma3_config(shape):
    from transformers import Gemma3Config

    sh = SHAPES[shape]
    text = dict(sh["text"])
    n = text["num_hidden_layers"]
    text["layer_types"] = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(n)]
    return Gemma3Config(
        text_config=text,
        vision_config=sh["vision"],
        mm_tokens_per_image=sh["mm_tokens_per_image"],
        boi_token_index=sh["boi_token_index"],
        eoi_token_index=sh["eoi_token_index"],
        image_token_index=sh["image_token_index"],
    )


def make_batch(shape, cfg):
    """One row of `tokens` tokens: BOS, a short prompt, the image block, then text; labels on the
    text after the image block (as a caption's response)."""
    sh = SHAPES[shape]
    t, m = sh["tokens"], sh["mm_tokens_per_image"]
    g = torch.Generator().manual_seed(1)
    low, high = 10, min(sh["boi_token_index"], cfg.text_config.vocab_size) - 1
    ids = torch.randint(low, high, (t,), generator=g)
    ids[0] = 2
    start = 6
    ids[start] = sh["boi_token_index"]
    ids[start + 1 : start + 1 + m] = sh["image_token_index"]
    ids[start + 1 + m] = sh["eoi_token_index"]
    labels = ids.clone()
    labels[: start + 2 + m] = -100
    size = cfg.vision_config.image_size
    pixels = torch.rand((1, 3, size, size), generator=g) * 2 - 1
    return dict(
        input_ids=ids[None].long(),
        attention_mask=torch.ones((1, t), dtype=torch.long),
        token_type_ids=(ids == sh["image_token_index"]).long()[None],
        labels=labels[None].long(),
        pixel_values=pixels.float(),
    )


def gemma4_config(shape):
    from transformers import Gemma4Config

    sh = SHAPES[shape]
    return Gemma4Config(
        text_config=sh["text"],
        vision_config=sh["vision"],
        audio_config=None,
        boi_token_id=sh["boi_token_index"],
        eoi_token_id=sh["eoi_token_index"],
        image_token_id=sh["image_token_index"],
    )


def make_gemma4_batch(shape, cfg):
    """One row as Gemma4Processor lays it out: BOS, a short prompt, the image block (boi, the soft
    tokens, eoi), then text with labels; the image's patches row by row in [0, 1] with their (x, y)
    positions, padded to the budget's patch count with zero patches at position -1."""
    sh = SHAPES[shape]
    p, k, px = cfg.vision_config.patch_size, cfg.vision_config.pooling_kernel_size, sh["image_px"]
    side = px // p
    soft = side * side // (k * k)
    slots = sh["max_soft_tokens"] * k * k
    g = torch.Generator().manual_seed(1)
    t = sh["tokens"]
    ids = torch.randint(10, sh["boi_token_index"] - 1, (t,), generator=g)
    ids[0] = 2
    start = 6
    ids[start] = sh["boi_token_index"]
    ids[start + 1 : start + 1 + soft] = sh["image_token_index"]
    ids[start + 1 + soft] = sh["eoi_token_index"]
    labels = ids.clone()
    labels[: start + 2 + soft] = -100
    image = torch.rand((3, px, px), generator=g)
    patches = image.reshape(3, side, p, side, p).permute(1, 3, 2, 4, 0).reshape(side * side, p * p * 3)
    ys, xs = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    positions = torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=-1)
    pixels = torch.zeros((1, slots, p * p * 3))
    pixels[0, : side * side] = patches
    pos = torch.full((1, slots, 2), -1, dtype=torch.long)
    pos[0, : side * side] = positions
    return dict(
        input_ids=ids[None].long(),
        attention_mask=torch.ones((1, t), dtype=torch.long),
        mm_token_type_ids=(ids == sh["image_token_index"]).long()[None],
        labels=labels[None].long(),
        pixel_values=pixels.float(),
        image_position_ids=pos,
        num_soft_tokens_per_image=torch.tensor([soft], dtype=torch.long),
    )


def make_model(args):
    from safetensors.torch import save_file
    from transformers import Gemma3ForConditionalGeneration, Gemma4ForConditionalGeneration

    gemma4 = SHAPES[args.shape].get("family") == "gemma4"
    cfg = gemma4_config(args.shape) if gemma4 else gemma3_config(args.shape)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    with torch.device(args.device):
        model = (Gemma4ForConditionalGeneration if gemma4 else Gemma3ForConditionalGeneration)(cfg).to(torch.bfloat16)
    model.save_pretrained(args.out)
    batch = make_gemma4_batch(args.shape, cfg) if gemma4 else make_batch(args.shape, cfg)
    save_file(batch, os.path.join(args.out, "batch.safetensors"))
    params = sum(p.numel() for p in model.parameters())
    print(f"make-model: {args.shape}, {params / 1e9:.3f}B parameters, {time.perf_counter() - t0:.1f} s -> {args.out}")


def make_text_batch(args):
    """One row of `tokens` random text tokens (BOS first), every position after the first a label:
    the text-only batch for a causal LM such as the 270M GGUF."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(1)
    ids = torch.randint(10, args.vocab - 1, (args.tokens,), generator=g)
    ids[0] = 2
    labels = ids.clone()
    labels[0] = -100
    save_file(
        dict(
            input_ids=ids[None].long(),
            attention_mask=torch.ones((1, args.tokens), dtype=torch.long),
            token_type_ids=torch.zeros((1, args.tokens), dtype=torch.long),
            labels=labels[None].long(),
        ),
        args.out,
    )
    print(f"make-text-batch: {args.tokens} tokens -> {args.out}")


def peak_rss_bytes():
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def lora_step(args):
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file

    dev = args.device
    dtype = {"bf16": torch.bfloat16, "f32": torch.float32}[args.dtype or ("f32" if dev == "cpu" else "bf16")]
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    if args.gguf:
        # A text model from one GGUF file (transformers dequantizes it to `dtype`).
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(
            os.path.dirname(os.path.abspath(args.gguf)), gguf_file=os.path.basename(args.gguf), dtype=dtype
        ).to(dev)
    else:
        # Gemma 3 or Gemma 4, as the checkpoint's config says.
        from transformers import AutoModelForImageTextToText

        model = AutoModelForImageTextToText.from_pretrained(args.model, dtype=dtype, device_map=dev)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    lcfg = LoraConfig(r=args.lora_r, lora_alpha=args.lora_r, lora_dropout=0.0, target_modules="all-linear")
    model = get_peft_model(model, lcfg)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-4)
    batch_path = args.batch or os.path.join(args.model, "batch.safetensors")
    batch = {k: v.to(dev) for k, v in load_file(batch_path).items()}
    if "pixel_values" in batch:
        batch["pixel_values"] = batch["pixel_values"].to(dtype)
    if args.gguf:
        batch.pop("token_type_ids", None)
    # Gemma 4's soft-token counts are the processor's bookkeeping, not a model input.
    batch.pop("num_soft_tokens_per_image", None)
    sync(dev)
    load_s = time.perf_counter() - t0
    loaded = torch.cuda.memory_allocated() if dev.startswith("cuda") else 0
    if dev.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    losses, step_s = [], []
    for i in range(args.warmup + args.steps):
        t1 = time.perf_counter()
        out = model(**batch)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(out.loss.item())
        sync(dev)
        if i >= args.warmup:
            step_s.append(time.perf_counter() - t1)
    med = statistics.median(step_s)
    tokens = int(batch["attention_mask"].sum())
    report = dict(
        impl="hf-transformers+peft",
        device=torch.cuda.get_device_name() if dev.startswith("cuda") else "cpu",
        dtype=args.dtype or ("f32" if dev == "cpu" else "bf16"),
        threads=torch.get_num_threads(),
        attn_implementation=model.base_model.model.config._attn_implementation,
        torch=torch.__version__,
        tokens=tokens,
        trainable=sum(p.numel() for p in trainable),
        load_s=load_s,
        step_s=step_s,
        median_step_s=med,
        tokens_per_s=tokens / med,
        first_loss=losses[0],
        last_loss=losses[-1],
        loaded_bytes=loaded,
        peak_allocated_bytes=torch.cuda.max_memory_allocated() if dev.startswith("cuda") else 0,
        peak_reserved_bytes=torch.cuda.max_memory_reserved() if dev.startswith("cuda") else 0,
        peak_rss_bytes=peak_rss_bytes(),
    )
    print(json.dumps(report))
    with open(args.out, "w") as f:
        json.dump(report, f)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    k = sub.add_parser("kernels")
    k.add_argument("--device", default="cuda")
    k.add_argument("--out", required=True)
    m = sub.add_parser("make-model")
    m.add_argument("--shape", choices=sorted(SHAPES), default="4b")
    m.add_argument("--device", default="cuda")
    m.add_argument("--out", required=True)
    b = sub.add_parser("make-text-batch")
    b.add_argument("--vocab", type=int, required=True)
    b.add_argument("--tokens", type=int, default=512)
    b.add_argument("--out", required=True)
    s = sub.add_parser("lora-step")
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="HF checkpoint directory (a Gemma 3 or Gemma 4 VLM)")
    src.add_argument("--gguf", help="a GGUF file (a Gemma 3 text model), dequantized by transformers")
    s.add_argument("--batch", help="batch file (default: batch.safetensors in --model)")
    s.add_argument("--dtype", choices=["bf16", "f32"], help="default: f32 on cpu, bf16 on cuda")
    s.add_argument("--threads", type=int, help="torch's CPU threads (default: torch's choice)")
    s.add_argument("--device", default="cuda")
    s.add_argument("--steps", type=int, default=3)
    s.add_argument("--warmup", type=int, default=1)
    s.add_argument("--lora-r", type=int, default=16)
    s.add_argument("--out", required=True)
    args = p.parse_args()
    {"kernels": kernels, "make-model": make_model, "make-text-batch": make_text_batch, "lora-step": lora_step}[args.cmd](args)


if __name__ == "__main__":
    main()
