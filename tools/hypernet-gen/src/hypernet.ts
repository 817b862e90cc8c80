/**
 * The hypernetwork H and its file format.
 *
 * At the last-token site (the default; last-site.ts) H maps z = [the last
 * layer's MLP input at the prompt's last token, the residual after it, the
 * target's embedding] to the value u a gated neuron writes, and the file
 * also holds the statistics that place each fact's gate. At the subject
 * site, H maps a fact's conditioning vector z to the value change δ of one MLP
 * output projection at the subject (ROME's value side); the key side stays
 * ROME's closed form (A = (C⁻¹k*)ᵀ / (k*ᵀC⁻¹k*), see features.ts):
 *
 *   z = [k* ÷ rms(k*), o/rms(o), e_t/rms(e_t), r/rms(r)]
 *       k*: the projection's input at the subject's last token (mean over the fact's phrasings),
 *       o:  the MLP output there, e_t: the embedding of the target's first token,
 *       r:  the last layer's residual where the answer is predicted (the relation asked; optional part);
 *   δ = ‖o‖ · (W2 gelu(W1 z + b1) + b2 + W3 z).
 *
 * On disk, a directory: `hypernet.safetensors` (the weights, and the
 * Cholesky factor L of the ridged key covariance, so applying needs no
 * corpus) and `hypernet.json` (the configuration: base model name and
 * sha256, target module, layer, shapes, how it was trained, and the sha256
 * of the safetensors file — the hypernetwork's id).
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Tensor, add, fromData, gelu, linear, mul } from '@catechism/core/tensor';
import { readSafetensors, serializeSafetensors, writeFileAtomic } from '@catechism/core/models';
import { UsageError } from '@catechism/core/records';
import { Rng } from '@catechism/core/random';
import type { GateSettings, GateStats } from './last-site.js';

export const HYPERNET_FORMAT = 'catechism-hypernet';
export const HYPERNET_FORMAT_VERSION = 1;
export const WEIGHTS_FILE = 'hypernet.safetensors';
export const CONFIG_FILE = 'hypernet.json';

/** Which parts make up z (measured alternatives: README). */
export type ZPart = 'key' | 'out' | 'target' | 'rel';

export interface HyperShape {
  /** Key (projection input) dimension. */
  keyDim: number;
  /** Model hidden size (δ's dimension). */
  hidden: number;
  /** Hidden width of H. */
  width: number;
  z: ZPart[];
}

export function zDim(s: Pick<HyperShape, 'keyDim' | 'hidden' | 'z'>): number {
  return s.z.reduce((n, p) => n + (p === 'key' ? s.keyDim : s.hidden), 0);
}

export interface HyperConfig extends HyperShape {
  format: typeof HYPERNET_FORMAT;
  format_version: number;
  /** `hypernet-<16 hex>` of the weights' sha256. */
  id: string;
  /** sha256 of hypernet.safetensors. */
  sha256: string;
  base_model: { name: string; sha256: string };
  /** The module whose output H edits (the checkpoint's own name). */
  targets: string[];
  layer: number;
  /** λ added to C before the factorisation (absolute). */
  ridge: number;
  /** Tokens behind the key covariance. */
  stats_tokens: number;
  /** Whether the relation's training phrasings were used for k* and o. */
  templates: boolean;
  /** Everything that went into training (hyperparameters, data hash, outcome). */
  training: Record<string, unknown>;
  /**
   * Where the edit is written: 'subject' (absent in older files): a rank-one
   * δA at the subject's last token of `layer` (ROME's key side); 'last': one
   * gated neuron of the last layer at the prompt's last token (last-site.ts).
   */
  site?: 'subject' | 'last';
  /** site 'last': the gate's settings, and the names behind the stored statistics' indices. */
  gate?: { settings: GateSettings; relations: string[]; subjects: string[]; prefixes: string[]; neurons: number[] };
}

export class HyperNet {
  constructor(
    readonly shape: HyperShape,
    readonly W1: Tensor,
    readonly b1: Tensor,
    readonly W2: Tensor,
    readonly b2: Tensor,
    readonly W3: Tensor,
  ) {}

  /** Seeded initialisation: W1 ~ N(0, 1/in); W2, W3 small, so δ starts near 0 (the unedited model). */
  static init(shape: HyperShape, seed: number): HyperNet {
    const rng = new Rng(seed);
    const Z = zDim(shape);
    const w = (n: number, sd: number) => {
      const a = new Float32Array(n);
      for (let i = 0; i < n; i++) a[i] = sd * rng.normal();
      return a;
    };
    const p = (data: Float32Array, s: number[]) => fromData(data, s, { requiresGrad: true });
    return new HyperNet(
      shape,
      p(w(shape.width * Z, 1 / Math.sqrt(Z)), [shape.width, Z]),
      p(new Float32Array(shape.width), [shape.width]),
      p(w(shape.hidden * shape.width, 0.01 / Math.sqrt(shape.width)), [shape.hidden, shape.width]),
      p(new Float32Array(shape.hidden), [shape.hidden]),
      p(new Float32Array(shape.hidden * Z), [shape.hidden, Z]),
    );
  }

  parameters(): Tensor[] {
    return [this.W1, this.b1, this.W2, this.b2, this.W3];
  }

  /** δ [F, hidden] for z [F, Z] and the per-fact scale ‖o‖ [F, 1]. */
  forward(z: Tensor, oRms: Tensor): Tensor {
    const h = gelu(linear(z, this.W1, this.b1));
    const d = add(linear(h, this.W2, this.b2), linear(z, this.W3, null));
    return mul(d, oRms);
  }

  tensors(): Record<string, { shape: number[]; data: Float32Array }> {
    const t = (x: Tensor) => ({ shape: x.shape.slice(), data: Float32Array.from(x.data) });
    return { W1: t(this.W1), b1: t(this.b1), W2: t(this.W2), b2: t(this.b2), W3: t(this.W3) };
  }
}

/** A loaded hypernetwork: H, its configuration and the key covariance's Cholesky factor. */
export interface LoadedHyper {
  dir: string;
  config: HyperConfig;
  net: HyperNet;
  /** Lower-triangular L with L Lᵀ = C + λI, [keyDim²] row-major (site 'subject'; empty for 'last'). */
  chol: Float64Array;
  /** site 'last': what places each fact's gate. */
  gate?: GateStats;
}

export function sha256Hex(b: Uint8Array | string): string {
  return createHash('sha256').update(b).digest('hex');
}

/** A short hash of a target-module list (for refusals that name both sides). */
export function targetsHash(targets: readonly string[]): string {
  return sha256Hex([...targets].sort().join('\n')).slice(0, 12);
}

/** Write H (weights + factor, then the config naming their sha256) into `dir`. */
export function saveHyper(
  dir: string, net: HyperNet, side: { chol: Float64Array } | { gate: GateStats }, cfg: Omit<HyperConfig, 'id' | 'sha256' | 'format' | 'format_version' | 'gate' | keyof HyperShape>,
): HyperConfig {
  fs.mkdirSync(dir, { recursive: true });
  const D = net.shape.keyDim;
  const extra: Record<string, { shape: number[]; data: Float32Array }> = {};
  let gateCfg: HyperConfig['gate'];
  if ('chol' in side) extra.chol = { shape: [D, D], data: Float32Array.from(side.chol) };
  else {
    const g = side.gate;
    const H = g.negMean.length;
    const R = g.relations.length;
    const cat = (xs: Float64Array[]) => {
      const out = new Float32Array(xs.reduce((n, x) => n + x.length, 0));
      let at = 0;
      for (const x of xs) {
        out.set(x, at);
        at += x.length;
      }
      return out;
    };
    Object.assign(extra, {
      neg_mean: { shape: [H], data: Float32Array.from(g.negMean) },
      neg_cov: { shape: [H, H], data: Float32Array.from(g.negCov) },
      rel_mean: { shape: [R, H], data: cat(g.relMean) },
      rel_cov: { shape: [R, H, H], data: cat(g.relCov) },
      sample: { shape: [g.sample.length / H, H], data: g.sample },
      sample_subject: { shape: [g.sampleSubject.length], data: Float32Array.from(g.sampleSubject) },
      sample_relation: { shape: [g.sampleRelation.length], data: Float32Array.from(g.sampleRelation) },
    });
    gateCfg = { settings: g.settings, relations: g.relations, subjects: g.subjects, prefixes: g.prefixes, neurons: g.neurons };
  }
  const bytes = serializeSafetensors({ ...net.tensors(), ...extra }, { format: 'pt', base_model_sha256: cfg.base_model.sha256 });
  const sha256 = sha256Hex(bytes);
  const config: HyperConfig = { format: HYPERNET_FORMAT, format_version: HYPERNET_FORMAT_VERSION, id: `hypernet-${sha256.slice(0, 16)}`, sha256, ...net.shape, ...cfg, ...(gateCfg ? { gate: gateCfg } : {}) };
  writeFileAtomic(path.join(dir, WEIGHTS_FILE), bytes);
  writeFileAtomic(path.join(dir, CONFIG_FILE), JSON.stringify(config, null, 2) + '\n');
  return config;
}

/** Read H from `dir`; a missing file, another format or weights that do not match the recorded sha256 are usage errors. */
export function loadHyper(dir: string, flag = '--hypernet'): LoadedHyper {
  const cfile = path.join(dir, CONFIG_FILE);
  const wfile = path.join(dir, WEIGHTS_FILE);
  if (!fs.existsSync(cfile) || !fs.existsSync(wfile)) throw new UsageError(`${flag} ${dir}: not a hypernetwork directory (needs ${CONFIG_FILE} and ${WEIGHTS_FILE}; train one with \`hypernet-gen train --out DIR\`)`);
  let config: HyperConfig;
  try {
    config = JSON.parse(fs.readFileSync(cfile, 'utf8')) as HyperConfig;
  } catch (e) {
    throw new UsageError(`${flag} ${cfile}: not JSON (${(e as Error).message})`);
  }
  if (config.format !== HYPERNET_FORMAT) throw new UsageError(`${flag} ${cfile}: format is ${JSON.stringify(config.format)}, expected ${JSON.stringify(HYPERNET_FORMAT)}`);
  if (config.format_version !== HYPERNET_FORMAT_VERSION) throw new UsageError(`${flag} ${cfile}: format_version ${config.format_version} is not supported (expected ${HYPERNET_FORMAT_VERSION})`);
  const bytes = fs.readFileSync(wfile);
  const sha = sha256Hex(bytes);
  if (sha !== config.sha256) throw new UsageError(`${flag} ${dir}: ${WEIGHTS_FILE} has sha256 ${sha}, but ${CONFIG_FILE} records ${config.sha256} (the files do not belong together)`);
  const st = readSafetensors(wfile);
  const t = (name: string) => fromData(Float32Array.from(st.float32(name)), st.info(name).shape);
  const shape: HyperShape = { keyDim: config.keyDim, hidden: config.hidden, width: config.width, z: config.z };
  const net = new HyperNet(shape, t('W1'), t('b1'), t('W2'), t('b2'), t('W3'));
  const Z = zDim(shape);
  if (net.W1.shape[1] !== Z || net.W2.shape[0] !== shape.hidden || net.W1.shape[0] !== shape.width) {
    throw new UsageError(`${flag} ${dir}: weights [${net.W1.shape.join(', ')}] / [${net.W2.shape.join(', ')}] do not match the configuration (z ${Z}, width ${shape.width}, hidden ${shape.hidden})`);
  }
  if (config.site !== 'last') return { dir, config, net, chol: Float64Array.from(st.float32('chol')) };
  const g = config.gate;
  if (!g) throw new UsageError(`${flag} ${cfile}: site "last" but no gate settings`);
  const H = config.hidden;
  const f64 = (name: string) => Float64Array.from(st.float32(name));
  const relMean = f64('rel_mean');
  const relCov = f64('rel_cov');
  const gate: GateStats = {
    settings: g.settings, relations: g.relations, subjects: g.subjects, prefixes: g.prefixes, neurons: g.neurons,
    negMean: f64('neg_mean'), negCov: f64('neg_cov'),
    relMean: g.relations.map((_, i) => relMean.slice(i * H, (i + 1) * H)),
    relCov: g.relations.map((_, i) => relCov.slice(i * H * H, (i + 1) * H * H)),
    sample: Float32Array.from(st.float32('sample')),
    sampleSubject: Int32Array.from(st.float32('sample_subject')),
    sampleRelation: Int32Array.from(st.float32('sample_relation')),
  };
  return { dir, config, net, chol: new Float64Array(0), gate };
}
