// Transpiles the two GPU test files to .devcarry/ for scripts/device/run.sh:
// tap becomes the shim in .devcarry/node_modules/tap, the tests' imports of
// src/ point at the built dist/ (carried), nothing from the registry needed.
import ts from 'typescript';
import * as fs from 'node:fs';
const jobs = [
  ['kernels/test/cuda.test.ts', '.devcarry/kt/cuda.test.js', [['./helpers.js', './helpers.js']]],
  ['kernels/test/helpers.ts', '.devcarry/kt/helpers.js', [['../src/index.js', '../../kernels/dist/index.js']]],
  ['tools/core/test/tensor-device.test.ts', '.devcarry/ct/tensor-device.test.js', [['@catechism/kernels', '../../kernels/dist/index.js'], ['../src/', '../../tools/core/dist/']]],
];
for (const [src, out, maps] of jobs) {
  let code = ts.transpileModule(fs.readFileSync(src, 'utf8'), { compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022 } }).outputText;
  for (const [a, b] of maps) code = code.split(`'${a}`).join(`'${b}`).split(`"${a}`).join(`"${b}`);
  if (out.endsWith('cuda.test.js')) code = code.replace("new URL('../scripts/gen-ops.mjs', import.meta.url)", "new URL('../../kernels/scripts/gen-ops.mjs', import.meta.url)");
  fs.writeFileSync(out, code);
}
