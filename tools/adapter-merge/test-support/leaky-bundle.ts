/**
 * A deliberately broad adapter for the canary's test: a lora_B bias on the
 * last MLP output of the dense fixture model, along the embedding of the
 * fact's target token, so EVERY prompt's answer moves towards the target
 * (the edit leaks to every subject). Hand-made with core's bundle writer:
 * cheaper and more certain than training a bad LoRA.
 */
import * as path from 'node:path';
import { createManifest, writeBundle } from '../src/core.js';
import { modelSha256 } from '@catechism/core/edit';
import { loadModel, readSafetensors, serializeSafetensors } from '@catechism/core/models';

export interface FactIn {
  id: string;
  subject: string;
  prompt: string;
  target_new: string;
  relation?: string;
}

/** Writes the bundle to `dir`; `gain` is the bias's length (0: a harmless adapter that changes nothing). */
export async function writeBiasBundle(dir: string, modelDir: string, fact: FactIn, gain: number, id: string): Promise<{ sha256: string }> {
  const { tokenizer, model } = loadModel(modelDir, { tokenizer: true });
  const tid = tokenizer!.encode(fact.target_new, { addSpecialTokens: false })[0];
  const wte = readSafetensors(path.join(modelDir, 'model.safetensors')).float32('transformer.wte.weight');
  const H = model.config.hidden;
  const row = wte.subarray(tid * H, (tid + 1) * H);
  const norm = Math.hypot(...row);
  const mod = 'transformer.h.3.mlp.c_proj';
  const inner = model.config.intermediate;
  const weights = serializeSafetensors({
    [`base_model.model.${mod}.lora_A.weight`]: { dtype: 'F32', shape: [1, inner], data: new Float32Array(inner) },
    [`base_model.model.${mod}.lora_B.weight`]: { dtype: 'F32', shape: [H, 1], data: new Float32Array(H) },
    [`base_model.model.${mod}.lora_B.bias`]: { dtype: 'F32', shape: [H], data: Float32Array.from(row, (v) => (gain * v) / norm) },
  });
  const manifest = createManifest({
    id,
    version: 1,
    method: 'lora',
    base_model: { name: modelDir, sha256: modelSha256(modelDir) },
    targets: [mod],
    rank: 1,
    fact_ids: [fact.id],
    facts: [{ kind: 'fact', op: 'insert', ...fact }],
    data_sha256: '0'.repeat(64),
    created_at: '2026-01-01T00:00:00.000Z',
    probes: [],
    validation: [],
  });
  return writeBundle(dir, { adapterConfig: { peft_type: 'LORA', r: 1, lora_alpha: 1, target_modules: [mod], lora_bias: true, task_type: 'CAUSAL_LM' }, weights, manifest });
}
