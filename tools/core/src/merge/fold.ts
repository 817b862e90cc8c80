/**
 * Folding adapters into a base model (W += f·B·A) and writing the result as
 * a Hugging Face model directory, plus answer scoring for `explain`.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { ActiveAdapter, CausalLM } from '../models/causal-lm.js';
import { writeFileAtomic, writeSafetensors, type TensorToWrite } from '../models/safetensors.js';
import { fromData, logSoftmax, noGrad, type Tensor } from '../tensor/index.js';
import { MergeError } from './methods.js';

/**
 * The base weights with every active adapter folded in. Linear weights are
 * [out, in] (W += f·B·A); GPT-2's Conv1D weights are [in, out] (W += f·(B·A)ᵀ).
 * A target on a tied lm_head unties it (`untied` is then true): the
 * embedding must stay as it was. Unchanged tensors are shared, not copied.
 */
export function foldAdapters(model: CausalLM, adapters: readonly ActiveAdapter[]): { weights: Map<string, Tensor>; untied: boolean } {
  const c = model.config;
  const arch = model.arch;
  const weights = new Map(model.weights);
  let untied = false;
  for (const { adapter, scale = 1 } of adapters) {
    const f = adapter.factor * scale;
    for (const [raw, m] of adapter.modules) {
      const mod = arch.canonical(raw);
      let wName = `${mod}.weight`;
      if (mod === arch.lmHead && c.tieEmbeddings) {
        const emb = `${arch.tokenEmbedding}.weight`;
        if (!weights.has(wName)) weights.set(wName, fromData(weights.get(emb)!.data.slice(), [...weights.get(emb)!.shape]));
        untied = true;
      }
      const w = weights.get(wName);
      if (!w) throw new MergeError(`cannot fold ${adapter.name}: the model has no weight ${wName}`);
      const r = adapter.r, fin = m.A.shape[1], fout = m.B.shape[0];
      const conv = arch.layout(mod) === 'in_out';
      const [rows, cols] = conv ? [fin, fout] : [fout, fin];
      if (w.shape[0] !== rows || w.shape[1] !== cols) throw new MergeError(`cannot fold ${adapter.name}: ${wName} is [${w.shape.join(', ')}], the adapter maps ${fin} → ${fout}`);
      const data = Float64Array.from(w.data);
      for (let o = 0; o < fout; o++) {
        for (let k = 0; k < r; k++) {
          const b = f * m.B.data[o * r + k];
          if (b === 0) continue;
          const a = k * fin;
          if (conv) for (let i = 0; i < fin; i++) data[i * fout + o] += b * m.A.data[a + i];
          else for (let i = 0; i < fin; i++) data[o * fin + i] += b * m.A.data[a + i];
        }
      }
      weights.set(wName, fromData(Float32Array.from(data), [...w.shape]));
      if (m.bias) {
        const bName = `${mod}.bias`;
        const bw = weights.get(bName);
        if (!bw) throw new MergeError(`cannot fold ${adapter.name}: module ${raw} has a lora_B bias but the base module has no bias to fold it into`);
        weights.set(bName, fromData(bw.data.map((v, i) => v + f * m.bias!.data[i]), [...bw.shape]));
      }
    }
  }
  return { weights, untied };
}

const TOKENIZER_FILES = ['tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json', 'vocab.json', 'merges.txt', 'tokenizer.model', 'generation_config.json'];

/**
 * Write `model` with `adapters` folded in as a Hugging Face model directory
 * `outDir` (config.json, model.safetensors in float32, tokenizer files copied
 * from `srcDir`). `outDir` must not exist or be empty.
 */
export function exportMerged(srcDir: string, model: CausalLM, adapters: readonly ActiveAdapter[], outDir: string): { files: string[]; untied: boolean } {
  if (fs.existsSync(outDir) && fs.readdirSync(outDir).length > 0) throw new MergeError(`${outDir}: exists and is not empty (export writes a fresh model directory)`);
  const { weights, untied } = foldAdapters(model, adapters);
  const cfg = JSON.parse(fs.readFileSync(path.join(srcDir, 'config.json'), 'utf-8')) as Record<string, unknown>;
  cfg.torch_dtype = 'float32';
  if (untied) cfg.tie_word_embeddings = false;
  fs.mkdirSync(outDir, { recursive: true });
  const t: Record<string, TensorToWrite> = {};
  for (const [name, w] of weights) t[name] = { shape: [...w.shape], data: w.data };
  writeSafetensors(path.join(outDir, 'model.safetensors'), t, { format: 'pt' });
  writeFileAtomic(path.join(outDir, 'config.json'), JSON.stringify(cfg, null, 2) + '\n');
  const files = ['config.json', 'model.safetensors'];
  for (const f of TOKENIZER_FILES) {
    const src = path.join(srcDir, f);
    if (fs.existsSync(src)) {
      fs.copyFileSync(src, path.join(outDir, f));
      files.push(f);
    }
  }
  return { files, untied };
}

export interface AnswerScore {
  /** Most likely next token after the prompt. */
  top1: number;
  /** Σ log P(answer token | prompt, earlier answer tokens). */
  logprob: number;
  /** Whether greedy decoding reproduces every answer token. */
  greedy_match: boolean;
}

/** Score `answer` ids as a continuation of `prompt` ids under the active adapters. */
export function scoreAnswer(model: CausalLM, adapters: readonly ActiveAdapter[], prompt: readonly number[], answer: readonly number[]): AnswerScore {
  if (prompt.length === 0) throw new MergeError('empty prompt');
  const prev = model.activeAdapters();
  model.setAdapters(adapters.slice());
  try {
    return noGrad(() => {
      const ids = Int32Array.from([...prompt, ...answer]);
      const T = ids.length;
      const V = model.config.vocabSize;
      const rows = Int32Array.from({ length: Math.max(1, answer.length) }, (_, j) => prompt.length - 1 + j);
      const { logits } = model.forward(ids, [1, T], { logitsAt: rows });
      const lp = logSoftmax(logits).data;
      let top1 = 0;
      for (let v = 1; v < V; v++) if (lp[v] > lp[top1]) top1 = v;
      let logprob = 0, match = true;
      for (let j = 0; j < answer.length; j++) {
        logprob += lp[j * V + answer[j]];
        let best = 0;
        for (let v = 1; v < V; v++) if (lp[j * V + v] > lp[j * V + best]) best = v;
        if (best !== answer[j]) match = false;
      }
      return { top1, logprob, greedy_match: match };
    });
  } finally {
    model.setAdapters(prev);
  }
}
