// Tensor storage knows its device; `.data` is host memory only; the compute
// device switch (what --device cuda selects) runs the tensor ops' kernels
// through the CUDA backend (its kernel bodies on the CPU where there is no GPU).
import t from 'tap';
import * as kernels from '@catechism/kernels';
import { Rng } from '../src/util/random.js';
import {
  Tensor, randn, tensor, add, linear, layerNorm, gelu, attentionQKV, reshape, crossEntropy, useDevice, deviceInfo, DeviceUnavailableError,
} from '../src/tensor/index.js';

t.test('host tensors: device cpu, data is the storage, host() and to(cpu) copy nothing', async (t) => {
  const x = tensor([1, 2, 3]);
  t.equal(x.device, 'cpu');
  t.equal(x.storage, x.data);
  t.equal(x.host(), x.data);
  t.equal(x.to('cpu'), x);
  t.equal(x.toHost(), x);
  t.throws(() => x.to('tpu' as 'cpu'), /unknown device "tpu"/);
  x.data = new Float32Array([4, 5, 6]);
  t.same(x.toArray(), [4, 5, 6]);
});

t.test('a tensor on the GPU: any use of .data (and so every host op) throws a message that says how to read it', async (t) => {
  // a device storage object without device memory behind it: .data must throw before anything reads it
  const stub = Object.assign(Object.create(kernels.DeviceArray.prototype) as kernels.DeviceArray<'f32'>, { type: 'f32', length: 4, device: 'cuda' });
  const d = new Tensor(stub, [2, 2]);
  t.equal(d.device, 'cuda');
  t.equal(d.size, 4);
  t.equal(d.storage, stub);
  const msg = /Tensor\.data: this tensor \(shape \[2, 2\]\) lives on cuda; read its values with \.host\(\)/;
  t.throws(() => d.data[0], msg);
  t.throws(() => d.data.length, msg);
  t.throws(() => { d.data[1] = 2; }, msg);
  t.throws(() => Array.from(d.data), msg);
  t.throws(() => kernels.scale(d.data, 2, new Float32Array(4)), msg);
  t.throws(() => add(d, tensor([1, 2, 3, 4], [2, 2])), /lives on cuda/);
});

function step(seed: number): { loss: number; grads: Float32Array[] } {
  const rng = new Rng(seed);
  const x = randn([1, 6, 48], rng);
  const w1 = randn([48, 48], rng, 0.2, { requiresGrad: true }), b1 = randn([48], rng, 0.1, { requiresGrad: true });
  const g = randn([48], rng, 1, { requiresGrad: true }), be = randn([48], rng, 0.1, { requiresGrad: true });
  const wqkv = randn([144, 48], rng, 0.2, { requiresGrad: true }), w2 = randn([10, 48], rng, 0.2, { requiresGrad: true });
  const h = gelu(layerNorm(linear(x, w1, b1), g, be));
  const a = attentionQKV(linear(h, wqkv), 2, { causal: true });
  const logits = reshape(linear(add(a, h), w2), [6, 10]);
  const loss = crossEntropy(logits, Int32Array.from([1, 2, 3, 4, 5, 6]));
  loss.backward();
  return { loss: loss.item(), grads: [w1, b1, g, be, wqkv, w2].map((p) => p.grad!.data.slice()) };
}

t.test('useDevice / deviceInfo: cpu by default; cuda without a usable GPU names what is missing', async (t) => {
  t.equal(deviceInfo().device, 'cpu');
  if (kernels.cudaUnavailable() === null) return t.pass('a GPU is usable here');
  t.throws(() => useDevice('cuda'), DeviceUnavailableError);
  t.throws(() => useDevice('cuda'), /^--device cuda: (no usable GPU|this build of @catechism\/kernels has no CUDA backend|the CUDA kernels were not built)/);
  t.equal(deviceInfo().device, 'cpu', 'still on the CPU');
  t.throws(() => tensor([1]).to('cuda'), /no usable GPU|no CUDA backend|not built for this GPU/);
});

const built = kernels.info().cudaBuilt;
t.test('a training step through the CUDA kernel bodies (cuda-sim) matches the CPU step', { skip: built ? false : 'built without CUDA' }, async (t) => {
  const want = step(5);
  const prev = kernels.setBackend('cuda-sim');
  let got;
  try {
    got = step(5);
  } finally {
    kernels.setBackend(prev);
  }
  t.ok(Math.abs(got.loss - want.loss) <= 1e-5 * Math.max(1, Math.abs(want.loss)), `loss ${got.loss} vs ${want.loss}`);
  got.grads.forEach((g, i) => {
    let worst = 0;
    for (let j = 0; j < g.length; j++) worst = Math.max(worst, Math.abs(g[j] - want.grads[i][j]) / (1e-5 + 1e-3 * Math.abs(want.grads[i][j])));
    t.ok(worst <= 1, `parameter ${i}: gradient within tolerance (worst ratio ${worst.toFixed(3)})`);
  });
});

t.test('on the GPU: useDevice(cuda) runs the same step; tensors move with to()', { skip: built && kernels.cudaUnavailable() === null ? false : 'no usable GPU' }, async (t) => {
  const want = step(5);
  useDevice('cuda');
  try {
    t.equal(deviceInfo().device, 'cuda');
    const got = step(5);
    t.ok(Math.abs(got.loss - want.loss) <= 1e-4 * Math.max(1, Math.abs(want.loss)), `loss ${got.loss} vs ${want.loss}`);
    const x = tensor([1, 2, 3, 4], [2, 2]);
    const d = x.to('cuda');
    t.equal(d.device, 'cuda');
    t.same(Array.from(d.host()), [1, 2, 3, 4]);
    t.same(d.clone().toHost().toArray(), [1, 2, 3, 4]);
  } finally {
    useDevice('cpu');
  }
});
