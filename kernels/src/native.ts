// Loads the addon. Its op functions are typed by the generated wire API
// (src/gen/native.ts, from scripts/ops.mjs); the runtime functions below are
// hand-written in native/addon.cc.
import { createRequire } from 'node:module';
import type { NativeOps } from './gen/native.js';

export interface NativeRuntime {
  setThreads(n: number): void;
  threads(): number;
  simdLevel(): number;
  bestSimdLevel(): number;
  limitSimd(level: number): void;
  noop(): void;
  cudaBuilt(): boolean;
  /** null when a GPU is usable, else what is missing. */
  cudaMissing(): string | null;
  cudaDescribe(): string;
  /** 0 cpu, 1 cuda-sim, 2 cuda (host buffers staged); throws when it cannot run here. */
  setHostBackend(mode: number): void;
  hostBackend(): number;
  deviceAlloc(obj: object, length: number, typeCode: number): void;
  deviceCopy(dev: object, host: ArrayBufferView, toDevice: boolean): void;
  deviceFree(dev: object): void;
  deviceSync(): void;
  // float64 linear algebra (CPU; native/cpu/linalg64.h)
  gemmF64(a: Float64Array, b: Float64Array, c: Float64Array, params: Float64Array): void;
  syrkLowerF64(a: Float64Array, c: Float64Array, params: Float64Array): void;
  choleskyF64(a: Float64Array, n: number): number;
  /** mode 0: rows ← row·(L·Lᵀ)⁻¹; 1: row·L⁻ᵀ; 2: row·L⁻¹. */
  solveRowsF64(l: Float64Array, n: number, b: Float64Array, m: number, mode: number): void;
}

export type Native = NativeOps & NativeRuntime;

const ADDON_PATH = '../build/Release/catechism_kernels.node';

function loadNative(): Native {
  const require = createRequire(import.meta.url);
  try {
    return require(ADDON_PATH) as Native;
  } catch (err) {
    const why = err instanceof Error ? err.message : String(err);
    throw new Error(
      `@catechism/kernels: the native addon (kernels/build/Release/catechism_kernels.node) could not be loaded: ${why}\n` +
        'Build it with `npm install` at the repository root, or `npx node-gyp rebuild` inside kernels/.',
    );
  }
}

export const native = loadNative();
