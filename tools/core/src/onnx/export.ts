/**
 * Writing an ONNX export: model.onnx (the folded model, see ./build.ts),
 * the tokenizer and config files beside it, and export.json (the same
 * provenance as model.onnx's metadata_props plus the file's sha256, so a
 * runtime can find and check an export without parsing the protobuf).
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { ActiveAdapter, CausalLM } from '../models/causal-lm.js';
import type { LoraAdapter } from '../models/lora.js';
import { writeFileAtomic } from '../models/safetensors.js';
import { buildGraph, OPSET } from './build.js';
import { encodeModel } from './proto.js';

export const ONNX_FILE = 'model.onnx';
export const EXPORT_INFO_FILE = 'export.json';
const COPIED = ['tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json', 'vocab.json', 'merges.txt', 'tokenizer.model', 'generation_config.json', 'config.json'];

/** One folded adapter as the export records it. */
export interface ExportedAdapter {
  /** Bundle identity, when the adapter came from a bundle. */
  id?: string;
  version?: number;
  sha256?: string;
  /** sha256 of the adapter's tensors and factor (what was folded; ./export.ts loraSha256). */
  lora_sha256: string;
  scale: number;
}

export interface OnnxExportInfo {
  format: 'catechism-onnx-export';
  base_model_sha256: string;
  model_type: string;
  adapters: ExportedAdapter[];
  options: { opset: number; kv_cache: boolean; router_logits: boolean };
  /** Key of (base model, adapters, options): the same state always has the same key. */
  state: string;
  /** sha256 of model.onnx. */
  model_sha256: string;
  /** Weights stored beside model.onnx (models over EXTERNAL_DATA_BYTES), and that file's sha256. */
  external_data?: { file: string; sha256: string };
  untied: boolean;
}

/** sha256 over an adapter's module names, shapes and tensor bytes (sorted by module) and its factor. */
export function loraSha256(a: LoraAdapter): string {
  const h = createHash('sha256');
  h.update(`r=${a.r};alpha=${a.alpha};fan_in_fan_out=${a.fanInFanOut}\n`);
  for (const name of [...a.modules.keys()].sort()) {
    const m = a.modules.get(name)!;
    h.update(`${name}\n`);
    for (const t of [m.A, m.B, ...(m.bias ? [m.bias] : [])]) {
      h.update(`[${t.shape.join(',')}]`);
      h.update(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength));
    }
  }
  return h.digest('hex');
}

/** The state key of a base model with adapters folded in under export options. */
export function stateKey(baseSha256: string, adapters: ReadonlyArray<Pick<ExportedAdapter, 'lora_sha256' | 'scale'>>, options: OnnxExportInfo['options']): string {
  const s = JSON.stringify({ base: baseSha256, adapters: adapters.map((a) => [a.lora_sha256, a.scale]), options });
  return createHash('sha256').update(s).digest('hex');
}

export interface OnnxModelResult {
  bytes: Uint8Array;
  info: OnnxExportInfo;
  /** With external data: the weights file's name and its pieces, in order (padding included). */
  external?: { file: string; chunks: Uint8Array[] };
}

/** ModelProto must stay under protobuf's 2 GiB; weights above this go to model.onnx.data. */
export const EXTERNAL_DATA_BYTES = 1.5 * 2 ** 30;
export const EXTERNAL_DATA_FILE = 'model.onnx.data';
const ALIGN = 4096; // external data offsets on page boundaries (the specification's recommendation, for mmap)

/**
 * model.onnx bytes for `model` with `adapters` folded in. `described` gives
 * the bundle identity of each adapter (same order) for the metadata.
 */
export function onnxModel(
  model: CausalLM, adapters: readonly ActiveAdapter[], baseSha256: string,
  opts: { described?: ReadonlyArray<Pick<ExportedAdapter, 'id' | 'version' | 'sha256'>>; kvCache?: boolean; externalDataBytes?: number } = {},
): OnnxModelResult {
  const routerLogits = model.config.experts > 0;
  const kvCache = opts.kvCache === true;
  const { model: msg, untied } = buildGraph(model, adapters, { routerLogits, kvCache });
  // large models: every weight tensor's bytes in model.onnx.data, referenced by offset
  let total = 0;
  for (const t of msg.graph.initializer) total += t.raw_data?.length ?? 0;
  let external: OnnxModelResult['external'];
  if (total > (opts.externalDataBytes ?? EXTERNAL_DATA_BYTES)) {
    const chunks: Uint8Array[] = [];
    let offset = 0;
    for (const t of msg.graph.initializer) {
      const raw = t.raw_data!;
      if (raw.length < ALIGN) continue; // shapes, axes and other small constants stay inline
      chunks.push(raw);
      t.external_data = [
        { key: 'location', value: EXTERNAL_DATA_FILE },
        { key: 'offset', value: String(offset) },
        { key: 'length', value: String(raw.length) },
      ];
      t.data_location = 1;
      delete t.raw_data;
      offset += raw.length;
      const pad = (ALIGN - (offset % ALIGN)) % ALIGN;
      if (pad > 0) chunks.push(new Uint8Array(pad));
      offset += pad;
    }
    external = { file: EXTERNAL_DATA_FILE, chunks };
  }
  const recorded: ExportedAdapter[] = adapters.map((a, i) => ({ ...(opts.described?.[i] ?? {}), lora_sha256: loraSha256(a.adapter), scale: a.scale ?? 1 }));
  const options = { opset: OPSET, kv_cache: kvCache, router_logits: routerLogits };
  const state = stateKey(baseSha256, recorded, options);
  const props: Record<string, string> = {
    'catechism.adapters': JSON.stringify(recorded),
    'catechism.base_model_sha256': baseSha256,
    'catechism.export_options': JSON.stringify(options),
    'catechism.model_type': model.config.modelType,
    'catechism.state': state,
  };
  msg.metadata_props = Object.keys(props).sort().map((key) => ({ key, value: props[key] }));
  msg.doc_string = `${model.config.modelType} causal LM with ${adapters.length} adapter(s) folded in; inputs input_ids, attention_mask; output logits`;
  const bytes = encodeModel(msg);
  const info: OnnxExportInfo = {
    format: 'catechism-onnx-export', base_model_sha256: baseSha256, model_type: model.config.modelType, adapters: recorded, options, state,
    model_sha256: createHash('sha256').update(bytes).digest('hex'), untied,
  };
  if (external) {
    const h = createHash('sha256');
    for (const c of external.chunks) h.update(c);
    info.external_data = { file: external.file, sha256: h.digest('hex') };
  }
  return external ? { bytes, info, external } : { bytes, info };
}

/**
 * Write an ONNX export directory: model.onnx, export.json and the model
 * directory's tokenizer and config files. `outDir` must not exist or be empty.
 */
export function writeOnnxExport(
  srcDir: string, model: CausalLM, adapters: readonly ActiveAdapter[], outDir: string, baseSha256: string,
  opts: { described?: ReadonlyArray<Pick<ExportedAdapter, 'id' | 'version' | 'sha256'>>; kvCache?: boolean; externalDataBytes?: number } = {},
): { files: string[]; info: OnnxExportInfo } {
  if (fs.existsSync(outDir) && fs.readdirSync(outDir).length > 0) throw new Error(`${outDir}: exists and is not empty (export writes a fresh model directory)`);
  const { bytes, info, external } = onnxModel(model, adapters, baseSha256, opts);
  fs.mkdirSync(outDir, { recursive: true });
  const files: string[] = [];
  if (external) {
    // piece by piece: the weights may not fit one buffer
    const fd = fs.openSync(path.join(outDir, external.file), 'w', 0o644);
    try {
      for (const c of external.chunks) fs.writeSync(fd, c);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    files.push(external.file);
  }
  writeFileAtomic(path.join(outDir, ONNX_FILE), bytes);
  files.unshift(ONNX_FILE);
  for (const f of COPIED) {
    const src = path.join(srcDir, f);
    if (fs.existsSync(src)) {
      fs.copyFileSync(src, path.join(outDir, f));
      files.push(f);
    }
  }
  writeFileAtomic(path.join(outDir, EXPORT_INFO_FILE), JSON.stringify(info, null, 2) + '\n');
  files.push(EXPORT_INFO_FILE);
  return { files, info };
}
