/**
 * ONNX export of the causal LMs (every family of ../models/arch) and the
 * onnxruntime-node runtime behind `--runtime onnx`.
 */
export { buildGraph, OPSET, IR_VERSION, type GraphOptions } from './build.js';
export { onnxModel, writeOnnxExport, loraSha256, stateKey, ONNX_FILE, EXPORT_INFO_FILE, type OnnxExportInfo, type ExportedAdapter } from './export.js';
export { encodeModel, decodeModel, type ModelMsg } from './proto.js';
export { OnnxSession, OnnxLM, onnxRuntimeModel, RUNTIMES, type RuntimeName, type OnnxRuntimeOptions, type OnnxOutputs } from './runtime.js';
