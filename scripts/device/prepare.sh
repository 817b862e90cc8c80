#!/usr/bin/env bash
# Prepares .devcarry/ for a GPU check on a lent device machine that has no
# package registry (the `device` tool's machines): scripts/gpu-check.sh needs
# npm ci there, this does not. After `npm ci && npm run build` here (the
# kernels build includes CUDA when nvcc is found; sm_90 by default):
#   bash scripts/device/prepare.sh
# then, through the device tool, run `bash .devcarry/run.sh` with carry
#   .devcarry kernels/build/Release/catechism_kernels.node kernels/dist
#   tools/core/dist node_modules/@catechism node_modules/@huggingface
# (about 28 MiB besides the tracked tree; node itself travels xz-compressed and
# is unpacked there only when the machine has none). It runs kernels'
# cuda.test.ts and core's tensor-device.test.ts under a small tap stand-in,
# the models bench's LoRA step (GPT-2 small) on our CPU and GPU backends, and
# the same step in PyTorch CUDA (gpu-check.sh's script).
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx '/.devcarry/' .git/info/exclude 2> /dev/null || { mkdir -p .git/info; echo '/.devcarry/' >> .git/info/exclude; }
mkdir -p .devcarry/node_modules/tap .devcarry/kt .devcarry/ct
printf '{ "name": "tap", "version": "0.0.0-shim", "type": "module", "main": "index.js" }\n' > .devcarry/node_modules/tap/package.json
cp scripts/device/tap-shim.js .devcarry/node_modules/tap/index.js
cp scripts/device/run.sh .devcarry/run.sh
node scripts/device/transpile.mjs
sed -n "/<< 'PY'$/,/^PY$/p" scripts/gpu-check.sh | sed '1d;$d' > .devcarry/torch_step.py
[ -s .devcarry/node.xz ] || xz -9 -T0 -c "$(command -v node)" > .devcarry/node.xz
node -e 'import("@catechism/kernels").then((k) => { if (!k.info().cudaBuilt) { console.error("prepare: the kernels build has no CUDA (nvcc missing?)"); process.exit(1); } })'
du -sh .devcarry
