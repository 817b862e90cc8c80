/**
 * onnxruntime-node (CPU execution provider) behind the engine's synchronous
 * forward: `--runtime onnx` scores with an ONNX export instead of our own
 * kernels, so every metric validate computes can come from an independent
 * engine.
 *
 * onnxruntime-node only runs asynchronously, and the scoring code (validate's
 * metrics, generation) is synchronous; the sessions therefore live in a
 * worker thread and the caller blocks on a shared word (Atomics.wait) until
 * the worker has answered on a MessagePort (read with receiveMessageOnPort).
 *
 * OnnxLM is a CausalLM whose forward runs the ONNX export of its current
 * adapter state (base model, or base with the active adapters folded in):
 * each state is exported once into the runtime's directory, or an export
 * already there (same state in its export.json, e.g. from
 * `adapter-merge export --format onnx`) is used after its sha256 is checked.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { MessageChannel, receiveMessageOnPort, Worker, type MessagePort } from 'node:worker_threads';
import { info as kernelInfo } from '@catechism/kernels';
import { CausalLM, KVCache, type ActiveAdapter, type ForwardOptions, type ForwardResult } from '../models/causal-lm.js';
import { ModelLoadError } from '../models/config.js';
import type { LoraAdapter } from '../models/lora.js';
import { fromData, zeros, type Tensor } from '../tensor/index.js';
import { OPSET } from './build.js';
import { EXPORT_INFO_FILE, loraSha256, ONNX_FILE, stateKey, writeOnnxExport, type OnnxExportInfo } from './export.js';

/** sha256 of a file, read in pieces (weights files can be larger than one buffer). */
function fileSha256(file: string): string {
  const h = createHash('sha256');
  const fd = fs.openSync(file, 'r');
  try {
    const buf = Buffer.allocUnsafe(1 << 24);
    for (let n; (n = fs.readSync(fd, buf, 0, buf.length, null)) > 0; ) h.update(buf.subarray(0, n));
  } finally {
    fs.closeSync(fd);
  }
  return h.digest('hex');
}

/** The runtimes a tool's `--runtime` accepts. */
export const RUNTIMES = ['engine', 'onnx'] as const;
export type RuntimeName = (typeof RUNTIMES)[number];

interface Bridge {
  worker: Worker;
  port: MessagePort;
  flag: Int32Array;
}
let bridge: Bridge | null = null;

function getBridge(): Bridge {
  if (bridge) return bridge;
  const here = import.meta.url;
  // tests run the TypeScript sources (the worker inherits their loader); tools run dist/
  const url = new URL(here.endsWith('.ts') ? './runtime-worker.ts' : './runtime-worker.js', here);
  const { port1, port2 } = new MessageChannel();
  const signal = new SharedArrayBuffer(4);
  const worker = new Worker(url, { workerData: { port: port2, signal }, transferList: [port2] });
  worker.unref();
  port1.unref();
  bridge = { worker, port: port1, flag: new Int32Array(signal) };
  return bridge;
}

let lastRequest = 0;

/**
 * Send one request to the worker and wait for its answer (synchronously).
 * The shared word counts the worker's answers: read before looking at the
 * port, so an answer that arrives between the look and the wait changes it
 * and the wait returns at once. Answers carry their request's number: an
 * answer found early (a wait that timed out under load) leaves its signal
 * behind, which must not pass for the next request's answer.
 */
function call<T>(req: object, transfer: ArrayBuffer[] = []): T {
  const b = getBridge();
  const id = (lastRequest = (lastRequest % 0x7fffffff) + 1);
  b.port.postMessage({ ...req, id }, transfer);
  const deadline = Date.now() + 30 * 60_000;
  for (;;) {
    const answered = Atomics.load(b.flag, 0);
    const msg = receiveMessageOnPort(b.port);
    if (msg && (msg.message as { id?: number }).id === id) return unwrap<T>(msg.message);
    if (msg) continue; // an answer to an earlier request that gave up waiting: not ours
    // short waits, so a worker that died (it can no longer wake us) is noticed
    if (Atomics.wait(b.flag, 0, answered, 1000) !== 'timed-out') continue;
    if (Date.now() > deadline) throw new Error('onnx runtime: no answer from the onnxruntime worker after 30 minutes');
    if (b.worker.threadId < 0) throw new Error('onnx runtime: the onnxruntime worker stopped');
  }
}

function unwrap<T>(m: unknown): T {
  const r = m as { ok: boolean; error?: string };
  if (!r.ok) throw new OnnxRunError(r.error ?? 'unknown error');
  return m as T;
}

class OnnxRunError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'OnnxRunError';
  }
}

export interface OnnxOutputs {
  logits: Float32Array;
  /** MoE exports: router logits per layer, each [B × S × E]. */
  routerLogits: Float32Array[];
  /** Every output by name (present.{i}.key/.value of a --kv-cache export among them). */
  all: Record<string, { data: Float32Array; dims: number[] }>;
}

/** One onnxruntime-node InferenceSession (CPU EP), driven synchronously. */
export class OnnxSession {
  private constructor(readonly file: string, private readonly id: number, readonly outputNames: string[]) {}

  /**
   * Open model.onnx. A file that is missing or that onnxruntime cannot load
   * is bad input: ModelLoadError (exit 2) naming the file.
   * `threads`: intra-op threads (0: onnxruntime's default).
   */
  static open(file: string, opts: { threads?: number } = {}): OnnxSession {
    if (!fs.existsSync(file)) throw new ModelLoadError(`${file}: no such ONNX model file`);
    try {
      const r = call<{ session: number; outputs: string[] }>({ op: 'open', file: path.resolve(file), threads: opts.threads ?? 0 });
      if (!r.outputs.includes('logits')) throw new ModelLoadError(`${file}: the ONNX model has no "logits" output (outputs: ${r.outputs.join(', ')})`);
      return new OnnxSession(file, r.session, r.outputs);
    } catch (e) {
      if (e instanceof OnnxRunError) throw new ModelLoadError(`${file}: onnxruntime cannot load this ONNX model (${e.message.split('\n')[0]})`);
      throw e;
    }
  }

  /**
   * Logits [B × T × V] (and router logits) for ids [B × T] and mask
   * [B × T], or with a --kv-cache export [B × (past + T)] and the past
   * keys and values in `extra` (past_key_values.{i}.key/.value).
   */
  run(ids: ArrayLike<number>, mask: ArrayLike<number>, B: number, T: number, extra: Record<string, { data: Float32Array; dims: number[] }> = {}): OnnxOutputs {
    const i64 = BigInt64Array.from(Array.from(ids, (v) => BigInt(v)));
    const m64 = BigInt64Array.from(Array.from(mask, (v) => BigInt(v)));
    const r = call<{ outputs: Record<string, { data: Float32Array; dims: number[] }> }>(
      { op: 'run', session: this.id, ids: i64, mask: m64, dims: [B, T], maskDims: [B, m64.length / B], extra },
      [i64.buffer, m64.buffer],
    );
    const router = this.outputNames
      .filter((n) => n.startsWith('router_logits.'))
      .sort((a, b) => Number(a.split('.')[1]) - Number(b.split('.')[1]))
      .map((n) => r.outputs[n].data);
    return { logits: r.outputs.logits.data, routerLogits: router, all: r.outputs };
  }

  close(): void {
    call({ op: 'close', session: this.id });
  }
}

export interface OnnxRuntimeOptions {
  /** The base model's directory (tokenizer and config files are copied into each export). */
  modelDir: string;
  /** sha256 of the base model's weights (recorded in, and checked against, every export). */
  baseSha256: string;
  /** Where exports are found and written; default a temporary directory removed at exit. */
  dir?: string;
  /** onnxruntime intra-op threads (default: as many as our kernels use, so the two engines compare fairly). */
  threads?: number;
  log?: (msg: string) => void;
}

const OPTIONS = (router: boolean): OnnxExportInfo['options'] => ({ opset: OPSET, kv_cache: false, router_logits: router });

/**
 * A CausalLM whose forward passes run in onnxruntime-node on the ONNX export
 * of the active adapter state. Hooks and explicit positions are refused (the
 * export's inputs are the ids and the mask); a KV cache is honoured by
 * recomputing the whole sequence (the export has no past key/values).
 */
export class OnnxLM extends CausalLM {
  private active_: ActiveAdapter[] = [];
  private sessions = new Map<string, OnnxSession>();
  private cacheIds = new WeakMap<KVCache, Int32Array>();
  private loraHash = new WeakMap<LoraAdapter, string>();
  private dir: string;

  constructor(base: CausalLM, private readonly rt: OnnxRuntimeOptions) {
    super(base.config, base.weights);
    if (rt.dir !== undefined) {
      this.dir = rt.dir;
      fs.mkdirSync(this.dir, { recursive: true });
    } else {
      this.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'catechism-onnx-'));
      const d = this.dir;
      process.once('exit', () => fs.rmSync(d, { recursive: true, force: true }));
    }
  }

  override setAdapters(list: ActiveAdapter[]): void {
    super.setAdapters(list); // checks the adapters fit the model
    this.active_ = list.slice();
  }

  /** The export of the current adapter state, opened (exported first when none in the directory matches). */
  session(): OnnxSession {
    const adapters = this.active_.map((a) => {
      let h = this.loraHash.get(a.adapter);
      if (!h) this.loraHash.set(a.adapter, (h = loraSha256(a.adapter)));
      return { lora_sha256: h, scale: a.scale ?? 1 };
    });
    const key = stateKey(this.rt.baseSha256, adapters, OPTIONS(this.config.experts > 0));
    const open = this.sessions.get(key);
    if (open) return open;
    let file = this.findExport(key);
    if (!file) {
      const out = path.join(this.dir, `state-${key.slice(0, 16)}`);
      fs.rmSync(out, { recursive: true, force: true });
      const t0 = performance.now();
      writeOnnxExport(this.rt.modelDir, this, this.active_, out, this.rt.baseSha256);
      file = path.join(out, ONNX_FILE);
      this.rt.log?.(`onnx: exported ${adapters.length === 0 ? 'the base model' : `the base model with ${adapters.length} adapter(s)`} to ${file} (${((performance.now() - t0) / 1000).toFixed(1)} s)`);
    }
    const s = OnnxSession.open(file, { threads: this.rt.threads ?? kernelInfo().threads });
    this.sessions.set(key, s);
    return s;
  }

  /** An export of state `key` in the directory (one level down), checked against its recorded sha256. */
  private findExport(key: string): string | null {
    for (const name of fs.readdirSync(this.dir).sort()) {
      const infoFile = path.join(this.dir, name, EXPORT_INFO_FILE);
      if (!fs.existsSync(infoFile)) continue;
      let info: OnnxExportInfo;
      try {
        info = JSON.parse(fs.readFileSync(infoFile, 'utf-8')) as OnnxExportInfo;
      } catch (e) {
        throw new ModelLoadError(`${infoFile}: not valid JSON (${(e as Error).message})`);
      }
      if (info.state !== key) continue;
      const file = path.join(this.dir, name, ONNX_FILE);
      if (!fs.existsSync(file)) throw new ModelLoadError(`${file}: missing (its ${EXPORT_INFO_FILE} is there)`);
      const sha = fileSha256(file);
      if (sha !== info.model_sha256) throw new ModelLoadError(`${file}: sha256 ${sha} differs from the ${info.model_sha256} its ${EXPORT_INFO_FILE} records (the file is damaged or was changed)`);
      if (info.external_data) {
        const data = path.join(this.dir, name, info.external_data.file);
        const dsha = fs.existsSync(data) ? fileSha256(data) : 'missing';
        if (dsha !== info.external_data.sha256) throw new ModelLoadError(`${data}: sha256 ${dsha} differs from the ${info.external_data.sha256} its ${EXPORT_INFO_FILE} records (the weights file is damaged, changed or missing)`);
      }
      return file;
    }
    return null;
  }

  override forward(ids: Int32Array, dims: readonly [number, number], opts: ForwardOptions = {}): ForwardResult {
    if (opts.hooks && Object.keys(opts.hooks).length > 0) throw new Error('--runtime onnx: hooks (activation capture and patching) need the engine runtime');
    if (opts.positions) throw new Error('--runtime onnx: explicit positions are not an input of the ONNX export (it counts them from the attention mask)');
    const c = this.config;
    const [B, T] = dims;
    this.checkIds(ids, dims);
    const cache = opts.kvCache;
    const past = cache ? cache.length : 0;
    const S = past + T;
    let mask = opts.attentionMask;
    if (mask && mask.length !== B * S) throw new RangeError(`forward: attentionMask has ${mask.length} entries, expected B × (cached + new) = ${B * S}`);
    if (!mask) {
      mask = new Uint8Array(B * S).fill(1);
      if (cache && past > 0) for (let b = 0; b < B; b++) mask.set(cache.mask.subarray(b * past, (b + 1) * past), b * S);
    }
    if (c.slidingWindow !== null && S > c.slidingWindow) throw new RangeError(`forward: ${S} tokens exceed the model's sliding_window of ${c.slidingWindow}, which is not supported`);
    if (this.arch.positionEmbedding && S > c.maxPositions) throw new RangeError(`forward: position ${S - 1} is outside the model's ${c.maxPositions} learned positions`);
    // the export has no past key/values: a cached call reruns the whole sequence
    let full = ids;
    if (cache && past > 0) {
      const prev = this.cacheIds.get(cache);
      if (!prev) throw new Error('--runtime onnx: a KV cache filled by another runtime');
      full = new Int32Array(B * S);
      for (let b = 0; b < B; b++) {
        full.set(prev.subarray(b * past, (b + 1) * past), b * S);
        full.set(ids.subarray(b * T, (b + 1) * T), b * S + past);
      }
    }
    const out = this.session().run(full, mask, B, S);
    if (cache) {
      this.cacheIds.set(cache, full);
      cache.mask = mask;
    }
    const V = c.vocabSize;
    // rows of the new tokens (flat b·T + t) in the [B, S] output
    const rowOf = (r: number) => Math.floor(r / T) * S + past + (r % T);
    const pick = (data: Float32Array, width: number, rows: ArrayLike<number>): Float32Array => {
      const o = new Float32Array(rows.length * width);
      for (let i = 0; i < rows.length; i++) o.set(data.subarray(rowOf(rows[i]) * width, (rowOf(rows[i]) + 1) * width), i * width);
      return o;
    };
    const all = Int32Array.from({ length: B * T }, (_, i) => i);
    let logits: Tensor;
    if (opts.skipLogits) logits = zeros([B, T, 0]);
    else if (opts.logitsAt) {
      for (const r of opts.logitsAt) if (!(r >= 0 && r < B * T)) throw new RangeError(`forward: logitsAt row ${r} is outside [0, ${B * T})`);
      logits = fromData(pick(out.logits, V, opts.logitsAt), [opts.logitsAt.length, V]);
    } else logits = fromData(past === 0 ? out.logits : pick(out.logits, V, all), [B, T, V]);
    if (out.routerLogits.length === 0) return { logits };
    const E = c.experts;
    const routerLogits = out.routerLogits.map((d) => fromData(past === 0 ? d : pick(d, E, all), [B, T, E]));
    return { logits, routerLogits };
  }

  /** Close every session this model opened. */
  close(): void {
    for (const s of this.sessions.values()) s.close();
    this.sessions.clear();
  }
}

/** `model` scored through onnxruntime-node instead of the engine (see OnnxLM). */
export function onnxRuntimeModel(model: CausalLM, opts: OnnxRuntimeOptions): OnnxLM {
  return new OnnxLM(model, opts);
}
