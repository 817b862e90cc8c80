#!/usr/bin/env bash
# The GPU check of scripts/gpu-check.sh for a device machine with no registry
# (prepared by scripts/device/prepare.sh; run from the repository root):
# node from .devcarry when absent, tap replaced by a shim, the prebuilt CUDA addon.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
log() { echo "== $* ($(date +%T))"; }
log start; nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv,noheader
if ! command -v node >/dev/null; then
  python3 -c "import lzma,shutil; shutil.copyfileobj(lzma.open('.devcarry/node.xz'), open('/tmp/node','wb'))" && chmod +x /tmp/node && export PATH=/tmp:$PATH
  log "node unpacked"
fi
node --version
node --input-type=module -e 'import * as k from "@catechism/kernels"; console.log(JSON.stringify(k.info()), k.cudaUnavailable())' 2>&1
log "kernel tests (every op: CPU vs GPU, staged and DeviceArrays)"
timeout 150 node .devcarry/kt/cuda.test.js > "$OUT/kernels-test.log" 2>&1; echo "exit $?"
grep -E "^(ok|not ok)|^# pass|not ok" "$OUT/kernels-test.log" | head -40
log "core tensor-device test"
timeout 100 node .devcarry/ct/tensor-device.test.js > "$OUT/core-test.log" 2>&1; echo "exit $?"
grep -E "^(ok|not ok)|^# pass|not ok" "$OUT/core-test.log" | head -20
T=$(nproc)
for b in cpu cuda; do
  log "LoRA step GPT-2 small, backend $b, $T threads"
  CATECHISM_BACKEND=$b timeout 120 node --import ./kernels/scripts/use-backend.mjs scripts/bench/models.bench.mjs --child small "$T" 5 2>&1 | tail -n 3
done
log "PyTorch CUDA step"
timeout 90 python3 .devcarry/torch_step.py 5 2>&1 | tail -n 3
log end
