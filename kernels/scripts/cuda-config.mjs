#!/usr/bin/env node
// Answers binding.gyp's questions about the CUDA build, so the CPU build never
// depends on CUDA. `node scripts/cuda-config.mjs <what>`:
//   enabled  1 when the CUDA backend is built: CATECHISM_CUDA=1 forces it (and
//            fails when nvcc is missing), CATECHISM_CUDA=0 turns it off, else
//            it is built when nvcc and libcudart_static.a are found
//   nvcc     path of nvcc
//   cudart   path of libcudart_static.a (linked statically: the addon loads on a
//            machine without the CUDA libraries and reports "no usable GPU")
//   include  the toolkit's include directory
//   gencode  nvcc -gencode flags for CATECHISM_CUDA_ARCH (comma-separated SM
//            numbers, default 90 = H100/H200; PTX of the highest is embedded too)
import { existsSync } from 'node:fs';
import { delimiter, dirname, join } from 'node:path';

function findNvcc() {
  const dirs = (process.env.PATH ?? '').split(delimiter).filter(Boolean);
  if (process.env.CUDA_HOME) dirs.push(join(process.env.CUDA_HOME, 'bin'));
  dirs.push('/usr/local/cuda/bin');
  for (const d of dirs) if (existsSync(join(d, 'nvcc'))) return join(d, 'nvcc');
  return null;
}

function toolkit(nvcc) {
  // nvcc may be a symlink outside the toolkit (e.g. /usr/local/bin/nvcc): try both
  const roots = [dirname(dirname(nvcc)), process.env.CUDA_HOME, '/usr/local/cuda'].filter(Boolean);
  for (const r of roots) {
    for (const lib of ['lib64', 'lib', 'targets/x86_64-linux/lib']) {
      const a = join(r, lib, 'libcudart_static.a');
      if (existsSync(a) && existsSync(join(r, 'include', 'cuda_runtime.h'))) return { cudart: a, include: join(r, 'include') };
    }
  }
  return null;
}

const what = process.argv[2];
const flag = process.env.CATECHISM_CUDA;
const nvcc = flag === '0' ? null : findNvcc();
const tk = nvcc ? toolkit(nvcc) : null;
if (flag === '1' && (!nvcc || !tk)) {
  console.error(`CATECHISM_CUDA=1 but ${!nvcc ? 'nvcc was not found (PATH, $CUDA_HOME/bin, /usr/local/cuda/bin)' : 'libcudart_static.a / cuda_runtime.h were not found next to ' + nvcc}`);
  process.exit(1);
}
const enabled = !!(nvcc && tk);
switch (what) {
  case 'enabled': console.log(enabled ? 1 : 0); break;
  case 'nvcc': console.log(nvcc ?? 'nvcc'); break;
  case 'cudart': console.log(tk?.cudart ?? ''); break;
  case 'include': console.log(tk?.include ?? ''); break;
  case 'gencode': {
    const archs = (process.env.CATECHISM_CUDA_ARCH ?? '90').split(',').map((s) => s.trim()).filter((s) => /^\d+a?$/.test(s));
    if (archs.length === 0) archs.push('90');
    const flags = archs.map((a) => `-gencode=arch=compute_${a},code=sm_${a}`);
    const top = archs[archs.length - 1];
    flags.push(`-gencode=arch=compute_${top},code=compute_${top}`);
    console.log(flags.join(' '));
    break;
  }
  default:
    console.error('usage: cuda-config.mjs enabled|nvcc|cudart|include|gencode');
    process.exit(2);
}
