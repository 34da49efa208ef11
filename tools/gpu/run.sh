#!/usr/bin/env bash
# Runs lapidary on a GPU machine from the archive `cargo xtask gpu-bundle` builds (no Rust
# toolchain, no network needed there), within about 8 minutes:
#   1. the kernel tests and the model tests on CUDA (LAPIDARY_DEVICE=cuda), side by side, while
#      PyTorch writes the random model of step 3,
#   2. the kernel benchmarks (criterion),
#   3. a LoRA training step of a Gemma 3 4B-shaped model with random weights (made here by
#      PyTorch, no download), bf16 base, batch 1, 1 image, 2,048 tokens,
#   4. the same kernels and the same step in PyTorch / HF transformers + PEFT on the same card,
# and prints one table last (also written to $OUT_DIR/table.md).
#
#   tools/gpu/run.sh [ARCHIVE] [--backend llvm|cpp|both] [--cpu] [--out DIR]
#
# ARCHIVE defaults to target/gpu-bundle/lapidary-gpu.tar.xz beside this script's repository.
# --backend: which CUDA code path runs: LLVM's NVPTX back end (llvm, the default) or CUDA C++
#   through NVRTC (cpp). With llvm, failing tests make the script test cpp too and carry
#   on with the one that passes; `both` tests both.
# --cpu: the whole sequence on the CPU (CubeCL's CPU runtime, torch on CPU, a tiny model): checks
#   this script and the bundle on a machine without a GPU.
# Needs: bash, tar with xz (or python3), python3 with torch, transformers, peft, safetensors.
set -uo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
archive="$here/../../target/gpu-bundle/lapidary-gpu.tar.xz"
backend=llvm
cpu=0
out_dir="${OUT:-$PWD/gpu-results}"
while [ $# -gt 0 ]; do
  case "$1" in
    --backend) backend="$2"; shift 2 ;;
    --cpu) cpu=1; shift ;;
    --out) out_dir="$2"; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) archive="$1"; shift ;;
  esac
done
case "$backend" in llvm|cpp|both) ;; *) echo "--backend $backend: expected llvm, cpp or both" >&2; exit 2 ;; esac
[ -f "$archive" ] || { echo "no archive at $archive (build it with: cargo xtask gpu-bundle)" >&2; exit 2; }
mkdir -p "$out_dir"
out_dir="$(cd "$out_dir" && pwd)"
started=$(date +%s)
elapsed() { echo $(( $(date +%s) - started )); }
say() { echo "[$(elapsed)s] $*" | tee -a "$out_dir/run.log"; }

# ---- unpack ----
work="${LAPIDARY_GPU_WORK:-/tmp/lapidary-gpu}"
rm -rf "$work" && mkdir -p "$work"
if tar -xJf "$archive" -C "$work" 2>/dev/null; then :; else
  python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' "$archive" "$work" || {
    echo "could not unpack $archive" >&2; exit 2; }
fi
b="$work/lapidary-gpu"
say "unpacked $(du -sh "$archive" | cut -f1) archive into $b: $(cat "$b/MANIFEST" | head -1)"

# ---- device and libraries ----
if [ "$cpu" = 1 ]; then
  device=cpu; torch_device=cpu; shape=tiny; matmul_sizes=256,512; card="CPU ($(nproc) cores)"; scale=4
else
  device=cuda; torch_device=cuda; shape=4b; matmul_sizes=1024,2048,4096,8192; scale=1
  card="$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)"
  # CUDA_PATH: the CUDA C++ path (NVRTC) reads CUDA's headers from $CUDA_PATH/include, the LLVM
  # path links $CUDA_PATH/nvvm/libdevice/libdevice.10.bc for exp, tanh, .... A toolkit that has
  # both is used as it is; otherwise one is laid out of what the machine has (a toolkit; libdevice
  # also from PyTorch's nvidia wheels or Triton), completed by the copies the bundle carries.
  if [ -z "${CUDA_PATH:-}" ] && [ ! -d /usr/local/cuda ] && command -v nvcc >/dev/null; then
    export CUDA_PATH="$(dirname "$(dirname "$(command -v nvcc)")")"
  fi
  toolkit="${CUDA_PATH:-/usr/local/cuda}"
  if [ ! -f "$toolkit/include/cuda_bf16.h" ] || [ ! -f "$toolkit/include/cuda/barrier" ] \
      || [ ! -f "$toolkit/include/crt/mma.h" ] || [ ! -f "$toolkit/nvvm/libdevice/libdevice.10.bc" ]; then
    sites="$(python3 -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null)"
    include=""; libdevice=""
    for d in "$toolkit/include" "$b/cuda/include"; do # CUDA's headers, crt/ and CCCL's (cuda/barrier)
      [ -f "$d/cuda_bf16.h" ] && [ -f "$d/cuda/barrier" ] && [ -f "$d/crt/mma.h" ] && { include="$d"; break; }
    done
    for f in "$toolkit/nvvm/libdevice/libdevice.10.bc" \
        $(for s in $sites; do echo "$s/nvidia/cuda_nvcc/nvvm/libdevice/libdevice.10.bc $s/triton/backends/nvidia/lib/libdevice.10.bc"; done) \
        "$b/cuda/nvvm/libdevice/libdevice.10.bc"; do
      [ -f "$f" ] && { libdevice="$f"; break; }
    done
    mkdir -p "$work/cuda/nvvm/libdevice"
    ln -sfn "$include" "$work/cuda/include"
    ln -sf "$libdevice" "$work/cuda/nvvm/libdevice/libdevice.10.bc"
    export CUDA_PATH="$work/cuda"
    say "CUDA_PATH laid out: headers from $include, libdevice from $libdevice"
  fi
  # NVRTC (and the driver) are loaded at run time: from the CUDA toolkit or PyTorch's wheels.
  libs=""
  for d in /usr/local/nvidia/lib64 "$toolkit/lib64" /usr/local/cuda/targets/x86_64-linux/lib \
      $(python3 -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null); do
    for lib in "$d"/libnvrtc.so* "$d"/nvidia/*/lib/libnvrtc.so* "$d"/nvidia/cu*/lib/libnvrtc.so*; do
      [ -e "$lib" ] && libs="$libs:$(dirname "$lib")"
    done
  done
  export LD_LIBRARY_PATH="${libs#:}:/usr/local/nvidia/lib64:${LD_LIBRARY_PATH:-}"
fi
say "device: $card; CUDA_PATH=${CUDA_PATH:-} LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
export LAPIDARY_DEVICE="$device" LAPIDARY_REPO_DIR="$b/repo" RUST_BACKTRACE=1

run_phase() { # name timeout_s command...
  local name="$1" limit="$2"; shift 2
  say "$name: $*"
  timeout "$limit" "$@" >"$out_dir/$name.log" 2>&1
  local rc=$?
  local summary; summary="$(grep -E '^test result:' "$out_dir/$name.log" | tail -1)"
  if [ $rc = 124 ]; then say "$name: TIMED OUT after ${limit}s ${summary}"; else say "$name: rc $rc ${summary}"; fi
  return $rc
}

# ---- 1. tests, with the random model made beside them ----
# The tests of one code path (kernel and model tests) and the model's making share the card;
# nothing timed runs until they are done.
tests_of() { # backend -> rc 0 when both test binaries pass
  run_phase "kernel-tests-$1" $((120 * scale)) "$b/$1/kernel-tests" & local k=$!
  # The demo's tests need its pretrained base, which the archive leaves out (its size limit);
  # they check the CPU demo, not a kernel.
  run_phase "model-tests-$1" $((150 * scale)) "$b/$1/model-tests" --skip demo:: & local m=$!
  wait $k; local rk=$?
  wait $m; local rm=$?
  [ $rk = 0 ] && [ $rm = 0 ]
}
model_dir="$work/gemma3-$shape-random"
run_phase make-model $((120 * scale)) python3 "$b/tools/torch_bench.py" make-model --shape "$shape" \
  --device "$torch_device" --out "$model_dir" &
make_model=$!
case "$backend" in
  llvm)
    if tests_of llvm; then chosen=llvm
    else
      say "tests failed with the LLVM back end: testing CUDA C++ through NVRTC (cpp)"
      if tests_of cpp; then chosen=cpp; else chosen=llvm; fi
    fi ;;
  cpp) tests_of cpp; chosen=cpp ;;
  both)
    chosen=""
    tests_of llvm && chosen=llvm
    tests_of cpp && chosen="${chosen:-cpp}"
    chosen="${chosen:-llvm}" ;;
esac
say "carrying on with the $chosen back end"
wait $make_model

# ---- 2. benchmarks ----
export CRITERION_HOME="$out_dir/criterion"
LAPIDARY_BENCH_MATMUL="$matmul_sizes" run_phase bench-kernels $((75 * scale)) "$b/$chosen/bench-kernels" --bench \
  --warm-up-time 0.3 --measurement-time 1 --noplot

# ---- 3. the LoRA step, lapidary then HF ----
# On the GPU attention's products run in bf16 on tensor cores (lapidary's activations are f32;
# HF's model computes attention in bf16).
products=bf16; [ "$cpu" = 1 ] && products=
LAPIDARY_ATTENTION_PRODUCTS=$products run_phase lapidary-step $((180 * scale)) "$b/$chosen/lapidary" bench-step \
  --model "$model_dir" --batch "$model_dir/batch.safetensors" --steps 1 --warmup 1
grep -E '^\{' "$out_dir/lapidary-step.log" | tail -1 >"$out_dir/lapidary-step.json"

# ---- 4. PyTorch on the same card ----
LAPIDARY_BENCH_MATMUL="$matmul_sizes" run_phase torch-kernels $((45 * scale)) python3 "$b/tools/torch_bench.py" kernels \
  --device "$torch_device" --out "$out_dir/torch-kernels.jsonl"
run_phase hf-step $((75 * scale)) python3 "$b/tools/torch_bench.py" lora-step --model "$model_dir" --device "$torch_device" \
  --steps 2 --warmup 1 --out "$out_dir/hf-step.json"

# ---- table ----
[ "$cpu" = 1 ] && label="none (CPU runtime)" || label="$chosen"
python3 "$b/tools/table.py" --card "$card" --backend "$label" --criterion "$CRITERION_HOME" \
  --torch "$out_dir/torch-kernels.jsonl" --step "$out_dir/lapidary-step.json" --step-ref "$out_dir/hf-step.json" \
  >"$out_dir/table.md"
say "done in $(elapsed) s; logs in $out_dir"
cat "$out_dir/table.md"
