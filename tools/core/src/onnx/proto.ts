/**
 * ONNX protobuf encoding through protobufjs with the schema subset in
 * tools/core/schema/onnx.proto (field numbers from the ONNX specification).
 * protobufjs writes fields in field-number order and repeated fields in
 * array order, so the same model object always encodes to the same bytes.
 */
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import protobuf from 'protobufjs';

/** src/onnx/ and dist/onnx/ both sit two levels below the package root, beside schema/. */
const SCHEMA = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../schema/onnx.proto');

let root: protobuf.Root | null = null;
function schema(): protobuf.Root {
  // keepCase: field names as the specification spells them (opset_import, raw_data)
  root ??= new protobuf.Root().loadSync(SCHEMA, { keepCase: true });
  return root;
}

/** TensorProto.DataType values the exporter uses. */
export const DT = { FLOAT: 1, INT32: 6, INT64: 7, BOOL: 9, DOUBLE: 11 } as const;
/** AttributeProto.AttributeType values. */
export const AT = { FLOAT: 1, INT: 2, STRING: 3, TENSOR: 4, FLOATS: 6, INTS: 7 } as const;

export interface TensorMsg {
  name: string;
  dims: number[];
  data_type: number;
  raw_data?: Uint8Array;
  external_data?: Array<{ key: string; value: string }>;
  data_location?: number;
}
export interface AttrMsg {
  name: string;
  type: number;
  f?: number;
  i?: number;
  s?: Uint8Array;
  t?: TensorMsg;
  ints?: number[];
  floats?: number[];
}
export interface NodeMsg {
  input: string[];
  output: string[];
  name: string;
  op_type: string;
  attribute: AttrMsg[];
}
export interface ValueInfoMsg {
  name: string;
  type: { tensor_type: { elem_type: number; shape: { dim: Array<{ dim_value?: number; dim_param?: string }> } } };
}
export interface ModelMsg {
  ir_version: number;
  producer_name: string;
  producer_version: string;
  domain?: string;
  model_version?: number;
  doc_string?: string;
  graph: {
    node: NodeMsg[];
    name: string;
    initializer: TensorMsg[];
    input: ValueInfoMsg[];
    output: ValueInfoMsg[];
  };
  opset_import: Array<{ domain: string; version: number }>;
  metadata_props: Array<{ key: string; value: string }>;
}

/** ModelProto bytes. */
export function encodeModel(m: ModelMsg): Uint8Array {
  const T = schema().lookupType('onnx.ModelProto');
  // the builder's objects have the schema's field names and types, so they are encoded as they are
  // (verify/fromObject would walk every weight tensor again)
  return T.encode(m as unknown as protobuf.Message).finish();
}

/** Decode ModelProto bytes (tests, metadata reads); int64 fields as numbers, bytes as Uint8Array. */
export function decodeModel(bytes: Uint8Array): ModelMsg {
  const T = schema().lookupType('onnx.ModelProto');
  return T.toObject(T.decode(bytes), { longs: Number, defaults: false, arrays: true }) as unknown as ModelMsg;
}
