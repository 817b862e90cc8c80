/**
 * The router-KL term (distill.ts routerKl) on the golden Mixtral checkpoint:
 * its value is KL(teacher ‖ student) of the router softmax, averaged over
 * rows and layers; its gradient reaches the gate LoRA (directly) and an
 * expert LoRA of layer 0 (through layer 1's router input), and matches
 * central finite differences.
 */
import t from 'tap';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadModel, type LoraAdapter } from '@catechism/core/models';
import { noGrad, type Tensor } from '@catechism/core/tensor';
import { Rng } from '@catechism/core/random';
import { routerKl } from '../src/distill.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const { model } = loadModel(path.join(ROOT, 'fixtures/golden/mixtral'));
const E = model.config.experts;
const B = 2;
const T = 5;
const ids = Int32Array.from({ length: B * T }, (_, i) => 3 + ((i * 7) % 50));
const rows = [1, 3, 4, 5 + 2, 5 + 4];
const layers = [0, 1];
const rng = new Rng(3);
const teacher = new Map(layers.map((l) => [l, Float32Array.from({ length: rows.length * E }, () => 2 * rng.normal())]));

function lossOf(adapter: LoraAdapter): Tensor {
  model.setAdapters([{ adapter }]);
  const { routerLogits } = model.forward(ids, [B, T], { skipLogits: true });
  return routerKl(routerLogits!, rows, teacher, layers);
}

t.test('value: mean over rows and layers of KL(softmax(teacher) ‖ softmax(student))', async (t) => {
  const lora = model.createLora('v', [model.arch.layer(0).moe!.router], { r: 2, alpha: 2, seed: 1, initBStd: 0.3 });
  model.setAdapters([{ adapter: lora }]);
  const { routerLogits } = noGrad(() => model.forward(ids, [B, T], { skipLogits: true }));
  const got = noGrad(() => routerKl(routerLogits!, rows, teacher, layers)).item();
  let want = 0;
  for (const l of layers) {
    let s = 0;
    rows.forEach((r, i) => {
      const sm = (x: ArrayLike<number>, o: number) => {
        const m = Math.max(...Array.from({ length: E }, (_, e) => x[o + e]));
        const z = Array.from({ length: E }, (_, e) => Math.exp(x[o + e] - m)).reduce((a, b) => a + b, 0);
        return Array.from({ length: E }, (_, e) => Math.exp(x[o + e] - m) / z);
      };
      const p = sm(teacher.get(l)!, i * E);
      const q = sm(routerLogits![l].data, r * E);
      for (let e = 0; e < E; e++) s += p[e] * Math.log(p[e] / q[e]);
    });
    want += s / rows.length;
  }
  want /= layers.length;
  t.ok(Math.abs(got - want) < 1e-5 * Math.max(1, want), `routerKl ${got} vs ${want}`);
  t.ok(got > 0);
  // the teacher's own logits give zero
  const self = new Map(layers.map((l) => [l, Float32Array.from(rows.flatMap((r) => Array.from(routerLogits![l].data.subarray(r * E, (r + 1) * E))))]));
  t.ok(Math.abs(noGrad(() => routerKl(routerLogits!, rows, self, layers)).item()) < 1e-6, 'KL of a distribution to itself is 0');
  model.setAdapters([]);
});

t.test('gradient matches central finite differences (gate LoRA of layer 1, expert LoRA of layer 0)', async (t) => {
  const gate = model.arch.layer(1).moe!.router;
  // the expert the first row's token is routed to at layer 0 (a LoRA on an expert nobody uses has no gradient)
  const expert = model.arch.layer(0).moe!.expert(0).out;
  const lora = model.createLora('g', [gate, expert, model.arch.layer(0).moe!.router], { r: 2, alpha: 2, seed: 5, initBStd: 0.2 });
  const loss = lossOf(lora);
  for (const p of lora.parameters()) p.grad = null;
  loss.backward();
  let checked = 0;
  let nonzero = 0;
  for (const [mod, m] of lora.modules) {
    for (const which of ['A', 'B'] as const) {
      const w = m[which];
      const g = Float32Array.from(w.grad!.data);
      for (const k of [0, 3, Math.floor(w.size / 2), w.size - 1]) {
        const old = w.data[k];
        const eps = 1e-2;
        w.data[k] = old + eps;
        const up = noGrad(() => lossOf(lora)).item();
        w.data[k] = old - eps;
        const down = noGrad(() => lossOf(lora)).item();
        w.data[k] = old;
        const fd = (up - down) / (2 * eps);
        const tol = 1e-4 + 0.02 * Math.abs(fd);
        t.ok(Math.abs(fd - g[k]) <= tol, `${mod} ${which}[${k}]: analytic ${g[k].toExponential(4)} vs finite difference ${fd.toExponential(4)}`);
        checked++;
        if (Math.abs(g[k]) > 1e-4) nonzero++;
      }
    }
  }
  t.equal(checked, 24);
  t.ok(nonzero >= 12, `${nonzero} of ${checked} checked entries have a gradient (the term reaches the gates and the expert)`);
  const expertGrad = lora.modules.get(expert)!.B.grad!.data.some((v) => Math.abs(v) > 1e-6);
  t.ok(expertGrad, 'an expert LoRA of layer 0 gets gradient through layer 1\'s router input');
  model.setAdapters([]);
});
