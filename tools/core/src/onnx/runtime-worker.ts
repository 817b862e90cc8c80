/**
 * The worker thread behind ./runtime.ts: owns the onnxruntime-node
 * sessions (CPU execution provider), answers each request on the port it
 * was given (tagged with the request's id), then counts the answer in the
 * shared signal word and wakes the caller blocked on it.
 */
import { parentPort, workerData } from 'node:worker_threads';
import type { MessagePort } from 'node:worker_threads';
import * as ort from 'onnxruntime-node';

const { port, signal } = workerData as { port: MessagePort; signal: SharedArrayBuffer };
const flag = new Int32Array(signal);
const sessions = new Map<number, ort.InferenceSession>();
let next = 1;

type Req = { id: number } & (
  | { op: 'open'; file: string; threads: number }
  | { op: 'run'; session: number; ids: BigInt64Array; mask: BigInt64Array; dims: [number, number]; maskDims: [number, number]; extra: Record<string, { data: Float32Array; dims: number[] }> }
  | { op: 'close'; session: number }
);

// For the bridge's test only: each answer posted this long late and signalled as long
// after posting, as a thread descheduled between the two does on a loaded machine (the
// caller finds the answer before its signal, and the signal comes during the next call).
const delayMs = Number(process.env.CATECHISM_ONNX_TEST_DELAY_MS ?? 0);
const later = (f: () => void): void => void (delayMs > 0 ? setTimeout(f, delayMs) : f());

port.on('message', (req: Req) => {
  const reply = (msg: object, transfer: ArrayBuffer[] = []): void =>
    later(() => {
      port.postMessage({ ...msg, id: req.id }, transfer);
      later(() => {
        Atomics.add(flag, 0, 1);
        Atomics.notify(flag, 0);
      });
    });
  void (async () => {
    try {
      if (req.op === 'open') {
        const opts: ort.InferenceSession.SessionOptions = {
          executionProviders: ['cpu'],
          graphOptimizationLevel: 'all',
          ...(req.threads > 0 ? { intraOpNumThreads: req.threads, interOpNumThreads: 1 } : {}),
        };
        const s = await ort.InferenceSession.create(req.file, opts);
        const id = next++;
        sessions.set(id, s);
        reply({ ok: true, session: id, inputs: s.inputNames, outputs: s.outputNames });
      } else if (req.op === 'run') {
        const s = sessions.get(req.session);
        if (!s) throw new Error(`no session ${req.session}`);
        const feeds: Record<string, ort.Tensor> = {
          input_ids: new ort.Tensor('int64', req.ids, req.dims),
          attention_mask: new ort.Tensor('int64', req.mask, req.maskDims),
        };
        for (const [name, t] of Object.entries(req.extra)) feeds[name] = new ort.Tensor('float32', t.data, t.dims);
        const res = await s.run(feeds);
        const out: Record<string, { data: Float32Array; dims: number[] }> = {};
        const transfer: ArrayBuffer[] = [];
        for (const name of s.outputNames) {
          const t = res[name];
          const data = (t.data as Float32Array).slice();
          out[name] = { data, dims: [...t.dims] };
          transfer.push(data.buffer);
          t.dispose();
        }
        reply({ ok: true, outputs: out }, transfer);
      } else if (req.op === 'close') {
        await sessions.get(req.session)?.release();
        sessions.delete(req.session);
        reply({ ok: true });
      }
    } catch (e) {
      reply({ ok: false, error: e instanceof Error ? e.message : String(e) });
    }
  })();
});
parentPort?.postMessage('ready');
