/**
 * LoRA adapters in PEFT's format.
 *
 * ΔW = (alpha / r) · B · A with A [r, in] and B [out, r] (PEFT's rsLoRA:
 * alpha / √r; per-module r and alpha: see loadLora), for both nn.Linear
 * and GPT-2's Conv1D (PEFT marks the latter with fan_in_fan_out = true; the
 * A/B shapes are the same). Files: adapter_config.json and
 * adapter_model.safetensors with `base_model.model.<module>.lora_A.weight` /
 * `lora_B.weight`.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Rng } from '../util/random.js';
import { Tensor, fromData, randn, zeros } from '../tensor/index.js';
import { readSafetensors, writeFileAtomic, writeSafetensors, type TensorToWrite } from './safetensors.js';
import { ModelLoadError } from './config.js';

export interface LoraModule {
  A: Tensor; // [r, in]
  B: Tensor; // [out, r]
  /** PEFT `lora_bias`: a bias on lora_B, [out]; scaled like B·A (LEACE-style edits). */
  bias?: Tensor;
}

export class LoraAdapter {
  constructor(
    readonly name: string,
    readonly r: number,
    readonly alpha: number,
    readonly modules: Map<string, LoraModule>,
    readonly fanInFanOut = false,
  ) {
    for (const [m, { A, B, bias }] of modules) {
      if (A.shape.length !== 2 || B.shape.length !== 2 || A.shape[0] !== r || B.shape[1] !== r) {
        throw new ModelLoadError(
          `LoRA adapter ${name}: module ${m} has lora_A [${A.shape.join(', ')}] and lora_B [${B.shape.join(', ')}], expected [${r}, in] and [out, ${r}]`,
        );
      }
      if (bias && (bias.shape.length !== 1 || bias.shape[0] !== B.shape[0])) {
        throw new ModelLoadError(`LoRA adapter ${name}: module ${m} has lora_B bias [${bias.shape.join(', ')}], expected [${B.shape[0]}]`);
      }
    }
  }

  /** alpha / r: the factor on B·A·x (the model multiplies in each active adapter's scale). */
  get factor(): number {
    return this.alpha / this.r;
  }

  targets(): string[] {
    return [...this.modules.keys()];
  }

  /** The trainable tensors (A and B of every module). */
  parameters(): Tensor[] {
    const out: Tensor[] = [];
    for (const m of this.modules.values()) {
      out.push(m.A, m.B);
      if (m.bias) out.push(m.bias);
    }
    return out;
  }
}

/**
 * A new adapter on `targets`, each given as [module name, in, out]. As in
 * PEFT, A is random (Kaiming-uniform-like scale) and B is zero, so the
 * adapter starts as the identity edit; `initB` draws B at random too (tests).
 */
export function createLora(
  name: string,
  targets: Array<[string, number, number]>,
  opts: { r: number; alpha?: number; seed?: number; fanInFanOut?: boolean; initBStd?: number },
): LoraAdapter {
  const r = opts.r;
  if (!Number.isInteger(r) || r <= 0) throw new RangeError(`createLora: rank must be a positive integer, got ${r}`);
  const rng = new Rng(opts.seed ?? 0);
  const modules = new Map<string, LoraModule>();
  for (const [m, fin, fout] of targets) {
    const A = randn([r, fin], rng, 1 / Math.sqrt(fin), { requiresGrad: true });
    const B = opts.initBStd ? randn([fout, r], rng, opts.initBStd, { requiresGrad: true }) : zeros([fout, r], { requiresGrad: true });
    modules.set(m, { A, B });
  }
  return new LoraAdapter(name, r, opts.alpha ?? r, modules, opts.fanInFanOut ?? false);
}

const PREFIX = 'base_model.model.';

/**
 * PEFT's rank_pattern/alpha_pattern lookup (peft.utils.other.get_pattern_key):
 * the first key, in the config's order, that as a regular expression matches
 * the whole module name or a dot-separated suffix of it
 * (`re.match(rf"(.*\.)?({key})$", module)`), or undefined. So `q_proj`
 * selects every layer's q_proj, `layers.1.self_attn.q_proj` one of them, and
 * `proj` none (not a whole name part).
 */
export function peftPatternKey(keys: readonly string[], module: string, where = 'pattern'): string | undefined {
  for (const key of keys) {
    let re: RegExp;
    try {
      re = new RegExp(`^(?:.*\\.)?(?:${key})$`);
    } catch (e) {
      throw new ModelLoadError(`${where}: key ${JSON.stringify(key)} is not a regular expression this loader can read (${(e as Error).message})`);
    }
    if (re.test(module)) return key;
  }
  return undefined;
}

/**
 * adapter_config.json keys whose value changes what the adapter computes and
 * that this loader does not implement, with the value that means "off".
 * Loading refuses them rather than apply a different delta than PEFT would.
 */
const UNSUPPORTED: Record<string, string> = {
  use_dora: 'DoRA (weight-decomposed LoRA)',
  bias: 'trained base-model biases (bias "all" / "lora_only")',
  modules_to_save: 'fully trained extra modules (modules_to_save)',
  layer_replication: 'layer replication',
  trainable_token_indices: 'trainable token embeddings',
  target_parameters: 'LoRA on parameters (target_parameters)',
  use_qalora: 'QA-LoRA',
  alora_invocation_tokens: 'activated LoRA (aLoRA)',
  arrow_config: 'Arrow routing',
};

/** Keys that only describe training, targeting or provenance: the saved tensors alone decide the delta. */
const NO_EFFECT = new Set([
  'peft_type', 'task_type', 'base_model_name_or_path', 'revision', 'inference_mode', 'auto_mapping', 'peft_version',
  'r', 'lora_alpha', 'use_rslora', 'rank_pattern', 'alpha_pattern', 'fan_in_fan_out', 'lora_bias',
  'target_modules', 'exclude_modules', 'layers_to_transform', 'layers_pattern', 'lora_dropout', 'init_lora_weights',
  'loftq_config', 'eva_config', 'corda_config', 'megatron_config', 'megatron_core', 'runtime_config', 'ensure_weight_tying',
]);

/** A config value that leaves a feature off: absent, null, false, "none", or empty. */
function isOff(v: unknown): boolean {
  if (v === undefined || v === null || v === false || v === 'none' || v === '') return true;
  if (Array.isArray(v)) return v.length === 0;
  if (typeof v === 'object') return Object.keys(v as object).length === 0;
  return false;
}

function patternMap(cfg: Record<string, unknown>, key: string, file: string, integer: boolean): Map<string, number> {
  const v = cfg[key];
  const out = new Map<string, number>();
  if (v === undefined || v === null) return out;
  if (typeof v !== 'object' || Array.isArray(v)) throw new ModelLoadError(`${file}: "${key}" must be an object of module pattern → number`);
  for (const [k, n] of Object.entries(v as Record<string, unknown>)) {
    const ok = typeof n === 'number' && Number.isFinite(n) && (!integer || (Number.isInteger(n) && n > 0));
    if (!ok) throw new ModelLoadError(`${file}: "${key}" entry ${JSON.stringify(k)} must be ${integer ? 'a positive integer' : 'a number'}, got ${JSON.stringify(n)}`);
    out.set(k, n);
  }
  return out;
}

/**
 * Load a PEFT LoRA adapter directory. Tensors come back trainable.
 *
 * The delta is exactly PEFT's: per module, scale = alpha / r (alpha / √r
 * with `use_rslora`), with r and alpha from `rank_pattern` / `alpha_pattern`
 * where a key matches (peftPatternKey). A LoraAdapter has one rank and one
 * factor, so modules whose rank or scale differs are normalised without
 * changing ΔW: A and B are zero-padded to the largest rank and B (and the
 * lora_B bias) is multiplied by (module scale / adapter factor). A config
 * key this loader cannot honour (DoRA, modules_to_save, trained biases, an
 * unknown key that is set, …) is refused with a message naming it.
 */
export function loadLora(dir: string, name = path.basename(dir)): LoraAdapter {
  const cfgFile = path.join(dir, 'adapter_config.json');
  const wFile = path.join(dir, 'adapter_model.safetensors');
  if (!fs.existsSync(cfgFile)) throw new ModelLoadError(`adapter directory ${dir} has no adapter_config.json`);
  if (!fs.existsSync(wFile)) throw new ModelLoadError(`adapter directory ${dir} has no adapter_model.safetensors`);
  let cfg: Record<string, unknown>;
  try {
    cfg = JSON.parse(fs.readFileSync(cfgFile, 'utf-8')) as Record<string, unknown>;
  } catch (e) {
    throw new ModelLoadError(`${cfgFile}: not valid JSON (${(e as Error).message})`);
  }
  if (cfg === null || typeof cfg !== 'object' || Array.isArray(cfg)) throw new ModelLoadError(`${cfgFile}: must be a JSON object`);
  if (cfg.peft_type !== 'LORA') throw new ModelLoadError(`${cfgFile}: peft_type is ${JSON.stringify(cfg.peft_type)}, expected "LORA"`);
  const r = cfg.r;
  const alpha = cfg.lora_alpha ?? r;
  if (typeof r !== 'number' || !Number.isInteger(r) || r <= 0) throw new ModelLoadError(`${cfgFile}: "r" must be a positive integer`);
  if (typeof alpha !== 'number' || !Number.isFinite(alpha)) throw new ModelLoadError(`${cfgFile}: "lora_alpha" must be a number`);
  for (const [key, what] of Object.entries(UNSUPPORTED)) {
    if (!isOff(cfg[key])) throw new ModelLoadError(`${cfgFile}: "${key}" = ${JSON.stringify(cfg[key])}: ${what} is not supported`);
  }
  for (const [key, v] of Object.entries(cfg)) {
    if (!NO_EFFECT.has(key) && !(key in UNSUPPORTED) && !isOff(v)) {
      throw new ModelLoadError(`${cfgFile}: unknown key "${key}" = ${JSON.stringify(v)} may change the adapter's delta; refusing rather than ignoring it`);
    }
  }
  if (cfg.use_rslora !== undefined && typeof cfg.use_rslora !== 'boolean') throw new ModelLoadError(`${cfgFile}: "use_rslora" must be true or false`);
  const rslora = cfg.use_rslora === true;
  const rankPattern = patternMap(cfg, 'rank_pattern', cfgFile, true);
  const alphaPattern = patternMap(cfg, 'alpha_pattern', cfgFile, false);

  const st = readSafetensors(wFile);
  // `.default` (PEFT's adapter name) may sit between lora_A/B and weight
  const re = /^base_model\.model\.(.+)\.lora_([AB])(?:\.[^.]+)?\.(weight|bias)$/;
  const parts = new Map<string, { A?: Tensor; B?: Tensor; bias?: Tensor }>();
  for (const n of st.names()) {
    const m = re.exec(n);
    if (!m) continue; // not a LoRA tensor (what could be one, e.g. modules_to_save, is refused above)
    if (m[2] === 'A' && m[3] === 'bias') throw new ModelLoadError(`${wFile}: ${n}: lora_A has no bias in PEFT's format`);
    const info = st.info(n);
    const t = fromData(st.float32(n).slice(), info.shape, { requiresGrad: true });
    const e = parts.get(m[1]) ?? {};
    if (m[3] === 'bias') e.bias = t;
    else if (m[2] === 'A') e.A = t;
    else e.B = t;
    parts.set(m[1], e);
  }
  if (parts.size === 0) throw new ModelLoadError(`${wFile}: no LoRA weights (base_model.model.<module>.lora_A.weight)`);

  // each module's rank and scale, as PEFT computes them
  const scaleOf = (a: number, rank: number) => (rslora ? a / Math.sqrt(rank) : a / rank);
  const per = new Map<string, { A: Tensor; B: Tensor; bias?: Tensor; rank: number; scale: number }>();
  for (const [mod, { A, B, bias }] of parts) {
    if (!A || !B) throw new ModelLoadError(`${wFile}: module ${mod} has lora_${A ? 'B' : 'A'} missing`);
    const rKey = peftPatternKey([...rankPattern.keys()], mod, `${cfgFile} rank_pattern`);
    const aKey = peftPatternKey([...alphaPattern.keys()], mod, `${cfgFile} alpha_pattern`);
    const rank = rKey === undefined ? r : rankPattern.get(rKey)!;
    const a = aKey === undefined ? alpha : alphaPattern.get(aKey)!;
    if (A.shape.length !== 2 || B.shape.length !== 2 || A.shape[0] !== rank || B.shape[1] !== rank) {
      const why = rKey === undefined ? `"r" ${r}` : `rank_pattern ${JSON.stringify(rKey)} → ${rank}`;
      throw new ModelLoadError(`${wFile}: module ${mod} has lora_A [${A.shape.join(', ')}] and lora_B [${B.shape.join(', ')}], but ${why} implies [${rank}, in] and [out, ${rank}]`);
    }
    per.set(mod, { A, B, ...(bias ? { bias } : {}), rank, scale: scaleOf(a, rank) });
  }

  // one rank and one factor for the adapter; the default modules' scale when it can be kept
  const R = Math.max(...[...per.values()].map((m) => m.rank));
  const adapterAlpha = R === r && !rslora ? alpha : scaleOf(alpha, r) * R;
  const factor = adapterAlpha / R;
  const modules = new Map<string, LoraModule>();
  for (const [mod, m] of per) {
    const k = m.scale / factor;
    if (m.rank === R && Math.abs(k - 1) < 1e-12) {
      modules.set(mod, m.bias ? { A: m.A, B: m.B, bias: m.bias } : { A: m.A, B: m.B });
      continue;
    }
    const [fin, fout] = [m.A.shape[1], m.B.shape[0]];
    const A = new Float32Array(R * fin);
    A.set(m.A.data); // rows beyond the module's rank stay zero
    const B = new Float32Array(fout * R);
    for (let o = 0; o < fout; o++) for (let j = 0; j < m.rank; j++) B[o * R + j] = m.B.data[o * m.rank + j] * k;
    const out: LoraModule = { A: fromData(A, [R, fin], { requiresGrad: true }), B: fromData(B, [fout, R], { requiresGrad: true }) };
    if (m.bias) out.bias = fromData(m.bias.data.map((v) => v * k), [fout], { requiresGrad: true });
    modules.set(mod, out);
  }
  return new LoraAdapter(name, R, adapterAlpha, modules, cfg.fan_in_fan_out === true);
}

/** The adapter's tensors under PEFT's key names (`base_model.model.<module>.lora_A/B.weight`, `lora_B.bias`). */
export function peftAdapterTensors(adapter: LoraAdapter): Record<string, TensorToWrite> {
  const tensors: Record<string, TensorToWrite> = {};
  for (const [mod, { A, B, bias }] of adapter.modules) {
    tensors[`${PREFIX}${mod}.lora_A.weight`] = { shape: [...A.shape], data: A.data };
    tensors[`${PREFIX}${mod}.lora_B.weight`] = { shape: [...B.shape], data: B.data };
    if (bias) tensors[`${PREFIX}${mod}.lora_B.bias`] = { shape: [...bias.shape], data: bias.data };
  }
  return tensors;
}

/** PEFT's adapter_config.json for an adapter (every writer of bundles uses this one). */
export function peftAdapterConfig(adapter: LoraAdapter, baseModel: string | null): Record<string, unknown> {
  return {
    peft_type: 'LORA',
    task_type: 'CAUSAL_LM',
    r: adapter.r,
    lora_alpha: adapter.alpha,
    lora_dropout: 0,
    bias: 'none',
    fan_in_fan_out: adapter.fanInFanOut,
    target_modules: adapter.targets().sort(),
    lora_bias: [...adapter.modules.values()].some((m) => m.bias !== undefined),
    base_model_name_or_path: baseModel,
    inference_mode: true,
  };
}

/** Save in PEFT's format (atomic per file). */
export function saveLora(dir: string, adapter: LoraAdapter, extra: { baseModel?: string } = {}): void {
  fs.mkdirSync(dir, { recursive: true });
  writeSafetensors(path.join(dir, 'adapter_model.safetensors'), peftAdapterTensors(adapter), { format: 'pt' });
  const cfg = peftAdapterConfig(adapter, extra.baseModel ?? null);
  writeFileAtomic(path.join(dir, 'adapter_config.json'), JSON.stringify(cfg, null, 2) + '\n');
}
