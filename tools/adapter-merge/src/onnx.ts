/**
 * adapter-merge's ONNX pieces: `export --format onnx` (the base model with
 * REF's adapter folded in, as model.onnx with its tokenizer files) and the
 * `--runtime onnx` choice of `explain` (answers scored by onnxruntime-node
 * on ONNX exports of each adapter state instead of by our engine).
 */
import * as path from 'node:path';
import { InputError, UsageError } from '@catechism/core/cli';
import type { CausalLM } from '@catechism/core/models';
import type { Ctx } from './commands.js';
import type { ParentBundle } from './merge-lib.js';

/** Flags of the ONNX choices (declared in main.ts). */
export interface OnnxArgs {
  'export-format'?: 'hf' | 'onnx';
  'kv-cache'?: boolean;
  runtime?: 'engine' | 'onnx';
  'onnx-dir'?: string;
}

export const EXPORT_FORMATS = ['hf', 'onnx'] as const;

/**
 * `export --format hf|onnx`: --format is every tool's record format
 * (ndjson, arrow); for export its model formats are taken out of argv
 * before the common flags are parsed, and the record format stays.
 */
export function exportFormatArgs(argv: string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const eq = a.startsWith('--format=') ? a.slice('--format='.length) : null;
    const v = eq ?? (a === '--format' ? argv[i + 1] : undefined);
    if (v !== undefined && (EXPORT_FORMATS as readonly string[]).includes(v)) {
      out.push(`--export-format=${v}`);
      if (eq === null) i++;
      continue;
    }
    out.push(a);
  }
  return out;
}

function args(ctx: Ctx): OnnxArgs {
  return ctx.args as unknown as OnnxArgs;
}

/** Write REF's adapter folded into `base` as an ONNX export directory (the base model hash was checked by the caller). */
export async function exportOnnx(
  ctx: Ctx, ref: string, bundle: ParentBundle, base: { dir: string; model: CausalLM; sha256(): string }, out: string,
  text: (s: string) => Promise<void>,
): Promise<void> {
  const { writeOnnxExport } = await import('@catechism/core/onnx');
  const m = bundle.manifest;
  let res;
  try {
    res = writeOnnxExport(base.dir, base.model, [{ adapter: bundle.adapter, scale: m.scale ?? 1 }], out, base.sha256(), {
      described: [{ id: m.id, version: m.version, sha256: bundle.sha256 }],
      kvCache: args(ctx)['kv-cache'] === true,
    });
  } catch (e) {
    const msg = (e as Error).message;
    if (/exists and is not empty/.test(msg)) throw new UsageError(`export: ${msg}`);
    if (e instanceof Error && ['MergeError', 'ModelLoadError'].includes(e.name)) throw new InputError(msg);
    throw e;
  }
  ctx.log(`exported ${base.dir} + ${m.id} v${m.version} (${bundle.sha256.slice(0, 12)}) → ${path.join(out, 'model.onnx')} (ONNX opset ${res.info.options.opset}${res.info.untied ? ', lm_head untied from the embeddings' : ''})`);
  const rec = {
    kind: 'export', ref, format: 'onnx', bundle: bundle.sha256, adapter_id: m.id, adapter_version: m.version, base_model: base.dir,
    base_model_sha256: res.info.base_model_sha256, model_sha256: res.info.model_sha256, path: path.resolve(out), files: res.files,
  };
  if (ctx.args.text) await text(`${path.resolve(out)}  ${m.id} v${m.version} folded into ${base.dir} (onnx)\n`);
  else await ctx.out.write(rec);
}

/** The model `explain` scores with: the engine's, or (--runtime onnx) the same model run by onnxruntime-node. */
export async function runtimeModel(ctx: Ctx, base: { dir: string; model: CausalLM; sha256(): string }): Promise<CausalLM> {
  const a = args(ctx);
  if ((a.runtime ?? 'engine') === 'engine') return base.model;
  const { onnxRuntimeModel } = await import('@catechism/core/onnx');
  return onnxRuntimeModel(base.model, { modelDir: base.dir, baseSha256: base.sha256(), ...(a['onnx-dir'] !== undefined ? { dir: a['onnx-dir'] } : {}), log: ctx.log });
}
