#!/usr/bin/env bash
# One GPU check of the CUDA backend (issue 24), under 10 minutes on an H100/H200:
#   1. build with CUDA (CATECHISM_CUDA=1; CATECHISM_CUDA_ARCH defaults to 90 = H100/H200)
#   2. the kernel tests on the GPU (kernels/test/cuda.test.ts: every op against the
#      CPU backend, host buffers staged and DeviceArrays) and core's tensor-device test
#   3. the LoRA training step at the GPT-2-small shape (B 4 × T 64, r 8; the models
#      bench's own step) on our CPU backend and on the GPU, and PyTorch CUDA when
#      python3 has torch with CUDA (said when not)
#   4. the demo (scripts/demo.sh) with --device cuda on every tool (CATECHISM_DEVICE=cuda)
# and prints a Markdown table for BENCHMARKS.md. Targets: every op within tolerance;
# GPU step ≥ 20× faster than our CPU step; ≤ 1.0× PyTorch CUDA's step time.
#
# Usage: bash scripts/gpu-check.sh            (from a checkout; installs with npm ci when
#                                              node_modules is missing, which needs the registry)
# Env: GPU_CHECK_ITERS (timed steps, default 5), GPU_CHECK_DEMO=0 (skip the demo),
#      TORCH_PYTHON (default python3), CATECHISM_CUDA_ARCH (default 90).
# Exit status: 0 all checks ran and passed, 1 a check failed, 2 no usable GPU / toolchain.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
out=$(mktemp -d -t gpu-check.XXXXXX)
iters=${GPU_CHECK_ITERS:-5}
py=${TORCH_PYTHON:-python3}
export CATECHISM_CUDA=1
export CATECHISM_CUDA_ARCH=${CATECHISM_CUDA_ARCH:-90}
start=$(date +%s)
failed=0
rows=()

say() { printf 'gpu-check: %s\n' "$*" >&2; }
row() { rows+=("| $1 | $2 | $3 | $4 |"); }
elapsed() { echo $(( $(date +%s) - $1 )); }

# ---------------------------------------------------------------- 0. toolchain
for tool in node npm nvcc; do
  command -v "$tool" > /dev/null || { say "$tool not found on PATH"; exit 2; }
done
gpu=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2> /dev/null | head -n 1)
[ -n "$gpu" ] || { say "nvidia-smi found no GPU"; exit 2; }
say "GPU: $gpu; nvcc $(nvcc --version | sed -n 's/.*release \([0-9.]*\).*/\1/p'); node $(node --version)"

# ---------------------------------------------------------------- 1. build with CUDA
t0=$(date +%s)
if [ -d node_modules ]; then
  (cd kernels && npx node-gyp rebuild -j "$(nproc)" --loglevel=warn) > "$out/build.log" 2>&1 && npx turbo run build --output-logs=errors-only >> "$out/build.log" 2>&1
else
  npm ci --no-audit --no-fund > "$out/build.log" 2>&1 && npx turbo run build --output-logs=errors-only >> "$out/build.log" 2>&1
fi
status=$?
if [ "$status" != 0 ]; then tail -n 40 "$out/build.log" >&2; say "build failed"; exit 1; fi
row "build with CUDA (sm_$CATECHISM_CUDA_ARCH)" "$(elapsed "$t0") s" "—" "ok"
info=$(node --input-type=module -e '
  import { info, cudaUnavailable } from "@catechism/kernels";
  const why = cudaUnavailable();
  if (why !== null) { console.error(why); process.exit(2); }
  console.log(info().cuda);
' 2> "$out/why.log") || { say "CUDA backend not usable: $(cat "$out/why.log")"; exit 2; }
say "kernels: $info"

# ---------------------------------------------------------------- 2. kernel tests on the GPU
t0=$(date +%s)
(cd kernels && npx tap --reporter=tap test/cuda.test.ts) > "$out/kernels-test.log" 2>&1
status=$?
pass=$(grep -c '^        ok ' "$out/kernels-test.log")
fail=$(grep -c '^        not ok ' "$out/kernels-test.log")
gpuRan=$(grep '^    ok [0-9]* - on the GPU' "$out/kernels-test.log" | grep -vc '# SKIP')
if [ "$status" = 0 ] && [ "$gpuRan" = 2 ]; then verdict=ok; else verdict=FAIL; failed=1; fi
row "kernel tests: every op vs the CPU backend (staged + DeviceArray)" "$(elapsed "$t0") s" "$pass passed, $fail failed" "$verdict"
t0=$(date +%s)
(cd tools/core && npx tap --reporter=tap test/tensor-device.test.ts) > "$out/core-test.log" 2>&1
status=$?
if [ "$status" = 0 ] && [ "$(grep '^    ok [0-9]* - on the GPU' "$out/core-test.log" | grep -vc '# SKIP')" = 1 ]; then verdict=ok; else verdict=FAIL; failed=1; fi
row "core tensor-device test (training step on the GPU vs CPU)" "$(elapsed "$t0") s" "—" "$verdict"

# ---------------------------------------------------------------- 3. LoRA step, GPT-2-small shape
threads=$(nproc)
step() { # $1 = cpu|cuda → JSON line {train_ms, eval_ms, ...}
  CATECHISM_BACKEND=$1 node --import ./kernels/scripts/use-backend.mjs scripts/bench/models.bench.mjs --child small "$threads" "$iters" 2>> "$out/step.log" | tail -n 1
}
field() { node -e 'const o = JSON.parse(process.argv[1] || "{}"); console.log(o[process.argv[2]] === undefined ? "" : o[process.argv[2]].toFixed(1))' "$1" "$2"; }
say "LoRA step, GPT-2-small shape, our CPU backend ($threads threads)"
cpuJson=$(step cpu)
say "LoRA step, GPT-2-small shape, GPU"
gpuJson=$(step cuda)
cpuMs=$(field "$cpuJson" train_ms)
gpuMs=$(field "$gpuJson" train_ms)
if [ -n "$cpuMs" ] && [ -n "$gpuMs" ]; then
  speedup=$(node -e "console.log(($cpuMs / $gpuMs).toFixed(1))")
  verdict=$(node -e "console.log($cpuMs / $gpuMs >= 20 ? 'ok' : 'below target')")
  [ "$verdict" = ok ] || failed=1
  row "LoRA train step B4×T64 r8, GPT-2 small: ours CPU ($threads threads) → ours GPU" "$cpuMs → $gpuMs ms" "${speedup}× (target ≥ 20×)" "$verdict"
  row "eval forward B4×T64, GPT-2 small: ours CPU → ours GPU" "$(field "$cpuJson" eval_ms) → $(field "$gpuJson" eval_ms) ms" "—" "—"
else
  row "LoRA train step, GPT-2 small" "failed" "see $out/step.log" "FAIL"
  failed=1
fi

# PyTorch CUDA, the same step (a minimal GPT-2 with LoRA on c_attn and c_proj, AdamW on the LoRA weights)
torchJson=$("$py" - "$iters" 2>> "$out/torch.log" << 'PY'
import json, statistics, sys, time
try:
    import torch
except ImportError:
    print(json.dumps({'missing': 'python3 has no torch'})); sys.exit(0)
if not torch.cuda.is_available():
    print(json.dumps({'missing': f'torch {torch.__version__} without a usable CUDA device'})); sys.exit(0)
dev = torch.device('cuda')
torch.manual_seed(0)
L, H, NH, V, B, T, R, ALPHA = 12, 768, 12, 50257, 4, 64, 8, 16
def w(*s): return (torch.randn(*s, device=dev) * 0.02)
class Lora(torch.nn.Module):
    def __init__(s, fin, fout):
        super().__init__()
        s.A = torch.nn.Parameter(torch.randn(R, fin, device=dev) / fin ** 0.5)
        s.B = torch.nn.Parameter(torch.zeros(fout, R, device=dev))
    def forward(s, x): return (x @ s.A.t()) @ s.B.t() * (ALPHA / R)
wte, wpe = w(V, H), w(1024, H)
layers = []
for _ in range(L):
    layers.append(dict(ln1=(torch.ones(H, device=dev), torch.zeros(H, device=dev)), attn=(w(H, 3 * H), torch.zeros(3 * H, device=dev)),
                       proj=(w(H, H), torch.zeros(H, device=dev)), ln2=(torch.ones(H, device=dev), torch.zeros(H, device=dev)),
                       fc=(w(H, 4 * H), torch.zeros(4 * H, device=dev)), mproj=(w(4 * H, H), torch.zeros(H, device=dev)),
                       la=Lora(H, 3 * H), lm=Lora(4 * H, H)))
params = [p for l in layers for m in (l['la'], l['lm']) for p in m.parameters()]
opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)
ln = torch.nn.functional.layer_norm
ids = torch.randint(0, V, (B, T), device=dev)
def forward():
    x = wte[ids] + wpe[:T]
    for l in layers:
        h = ln(x, (H,), *l['ln1'])
        qkv = h @ l['attn'][0] + l['attn'][1] + l['la'](h)
        q, k, v = qkv.view(B, T, 3, NH, H // NH).permute(2, 0, 3, 1, 4)
        if hasattr(torch.nn.functional, 'scaled_dot_product_attention'):
            a = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # torch < 2.0
            s = (q @ k.transpose(-1, -2)) / (H // NH) ** 0.5
            s = s.masked_fill(torch.ones(T, T, dtype=torch.bool, device=dev).triu(1), float('-inf'))
            a = torch.softmax(s, -1) @ v
        x = x + a.transpose(1, 2).reshape(B, T, H) @ l['proj'][0] + l['proj'][1]
        h = ln(x, (H,), *l['ln2'])
        u = torch.nn.functional.gelu(h @ l['fc'][0] + l['fc'][1], approximate='tanh')
        x = x + u @ l['mproj'][0] + l['mproj'][1] + l['lm'](u)
    return ln(x, (H,)) @ wte.t()
def train():
    logits = forward()
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, V), ids[:, 1:].reshape(-1))
    loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
    return loss.item()
def timed(fn, iters):
    fn(); torch.cuda.synchronize(); ts = []
    for _ in range(iters):
        t0 = time.perf_counter(); fn(); torch.cuda.synchronize(); ts.append((time.perf_counter() - t0) * 1000)
    return statistics.median(ts)
print(json.dumps({'train_ms': timed(train, int(sys.argv[1])), 'torch': torch.__version__}))
PY
)
torchMs=$(field "$torchJson" train_ms)
if [ -n "$torchMs" ] && [ -n "$gpuMs" ]; then
  ratio=$(node -e "console.log(($gpuMs / $torchMs).toFixed(2))")
  verdict=$(node -e "console.log($gpuMs / $torchMs <= 1.0 ? 'ok' : 'slower than PyTorch')")
  [ "$verdict" = ok ] || failed=1
  row "LoRA train step, GPT-2 small: ours GPU vs PyTorch CUDA ($(node -e 'console.log(JSON.parse(process.argv[1]).torch)' "$torchJson"))" "$gpuMs vs $torchMs ms" "${ratio}× (target ≤ 1.0)" "$verdict"
else
  why=$(node -e 'try { console.log(JSON.parse(process.argv[1]).missing ?? "failed (see torch.log)") } catch { console.log("failed (see torch.log)") }' "$torchJson")
  row "PyTorch CUDA reference" "—" "$why" "not measured"
fi

# ---------------------------------------------------------------- 4. the demo with --device cuda
if [ "${GPU_CHECK_DEMO:-1}" != 0 ]; then
  t0=$(date +%s)
  if CATECHISM_DEVICE=cuda DEMO_DIR="$out/demo" bash scripts/demo.sh 3 > "$out/demo.log" 2>&1; then verdict=ok; else verdict=FAIL; failed=1; fi
  row "demo (3 edits) with --device cuda on every tool" "$(elapsed "$t0") s" "$(grep -c PASS "$out/demo.log") adapters passed" "$verdict"
fi

# ---------------------------------------------------------------- table
{
  echo "### CUDA check, $(date -u '+%Y-%m-%d %H:%M UTC'), $gpu"
  echo
  echo "kernels: $info; $(elapsed "$start") s in all; logs in $out"
  echo
  echo '| check | time | result | verdict |'
  echo '|---|---:|---|---|'
  printf '%s\n' "${rows[@]}"
}
exit "$failed"
