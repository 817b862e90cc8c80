/**
 * LoRA adapters in PEFT's format.
 *
 * ΔW = (alpha / r) · B · A with A [r, in] and B [out, r], for both nn.Linear
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

/** Load a PEFT LoRA adapter directory. Tensors come back trainable. */
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
  if (cfg.peft_type !== 'LORA') throw new ModelLoadError(`${cfgFile}: peft_type is ${JSON.stringify(cfg.peft_type)}, expected "LORA"`);
  const r = cfg.r;
  const alpha = cfg.lora_alpha ?? r;
  if (typeof r !== 'number' || !Number.isInteger(r) || r <= 0) throw new ModelLoadError(`${cfgFile}: "r" must be a positive integer`);
  if (typeof alpha !== 'number') throw new ModelLoadError(`${cfgFile}: "lora_alpha" must be a number`);
  if (cfg.use_dora === true) throw new ModelLoadError(`${cfgFile}: DoRA adapters are not supported`);
  if (cfg.rank_pattern && Object.keys(cfg.rank_pattern as object).length > 0) {
    throw new ModelLoadError(`${cfgFile}: per-module rank_pattern is not supported`);
  }
  const st = readSafetensors(wFile);
  const modules = new Map<string, LoraModule>();
  // `.default` (PEFT's adapter name) may sit between lora_A/B and weight
  const re = /^base_model\.model\.(.+)\.lora_([AB])(?:\.[^.]+)?\.(weight|bias)$/;
  const parts = new Map<string, { A?: Tensor; B?: Tensor; bias?: Tensor }>();
  for (const n of st.names()) {
    const m = re.exec(n);
    if (!m) continue; // e.g. modules_to_save, not LoRA weights
    if (m[2] === 'A' && m[3] === 'bias') throw new ModelLoadError(`${wFile}: ${n}: lora_A has no bias in PEFT's format`);
    const info = st.info(n);
    const t = fromData(st.float32(n).slice(), info.shape, { requiresGrad: true });
    const e = parts.get(m[1]) ?? {};
    if (m[3] === 'bias') e.bias = t;
    else if (m[2] === 'A') e.A = t;
    else e.B = t;
    parts.set(m[1], e);
  }
  for (const [mod, { A, B, bias }] of parts) {
    if (!A || !B) throw new ModelLoadError(`${wFile}: module ${mod} has lora_${A ? 'B' : 'A'} missing`);
    modules.set(mod, bias ? { A, B, bias } : { A, B });
  }
  if (modules.size === 0) throw new ModelLoadError(`${wFile}: no LoRA weights (base_model.model.<module>.lora_A.weight)`);
  return new LoraAdapter(name, r, alpha, modules, cfg.fan_in_fan_out === true);
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
