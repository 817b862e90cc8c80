/**
 * A small ONNX graph builder: nodes get deterministic names (op type and a
 * running number), initializers keep the order they were added in, and
 * constants are deduplicated by value, so the same model always yields the
 * same graph.
 */
import { AT, DT, type AttrMsg, type NodeMsg, type TensorMsg } from './proto.js';

export type AttrValue = number | number[] | string | { float: number } | { floats: number[] } | { tensor: TensorMsg };

function bytesOf(a: Float32Array | Float64Array | BigInt64Array | Uint8Array): Uint8Array {
  // ONNX raw_data is little-endian; so is every machine this runs on (x86-64, arm64)
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

export class GraphBuilder {
  readonly nodes: NodeMsg[] = [];
  readonly initializers: TensorMsg[] = [];
  /** Initializer payloads, by name, for external-data layout. */
  readonly payload = new Map<string, Uint8Array>();
  private names = new Set<string>();
  private consts = new Map<string, string>();
  private count = 0;

  /** A float32 initializer (weights). */
  f32(name: string, data: Float32Array, dims: number[]): string {
    return this.init(name, DT.FLOAT, dims, bytesOf(data));
  }

  init(name: string, dataType: number, dims: number[], raw: Uint8Array): string {
    if (this.names.has(name)) throw new Error(`onnx: initializer ${name} defined twice`);
    this.names.add(name);
    this.initializers.push({ name, dims, data_type: dataType, raw_data: raw });
    this.payload.set(name, raw);
    return name;
  }

  /** An int64 constant (shapes, axes), shared by value. */
  i64(values: number[], dims: number[] = [values.length]): string {
    const key = `i64:${dims.join('x')}:${values.join(',')}`;
    let n = this.consts.get(key);
    if (!n) {
      n = `const.i64.${this.consts.size}`;
      this.init(n, DT.INT64, dims, bytesOf(BigInt64Array.from(values.map((v) => BigInt(v)))));
      this.consts.set(key, n);
    }
    return n;
  }

  /** A float32 constant, shared by value. */
  scalarF32(v: number, dims: number[] = []): string {
    const key = `f32:${dims.join('x')}:${Math.fround(v)}`;
    let n = this.consts.get(key);
    if (!n) {
      n = `const.f32.${this.consts.size}`;
      this.init(n, DT.FLOAT, dims, bytesOf(Float32Array.of(v)));
      this.consts.set(key, n);
    }
    return n;
  }

  /** A float64 vector constant. */
  f64(name: string, data: Float64Array): string {
    return this.init(name, DT.DOUBLE, [data.length], bytesOf(data));
  }

  /** Add a node; returns its output names (`outputs` of them). */
  node(op: string, inputs: string[], attrs: Record<string, AttrValue> = {}, outputs = 1): string[] {
    const id = `${op}_${this.count++}`;
    const out = Array.from({ length: outputs }, (_, i) => (outputs === 1 ? id : `${id}:${i}`));
    const attribute: AttrMsg[] = Object.keys(attrs).sort().map((name) => attr(name, attrs[name]));
    this.nodes.push({ input: inputs, output: out, name: id, op_type: op, attribute });
    return out;
  }

  /** A single-output node. */
  op(op: string, inputs: string[], attrs: Record<string, AttrValue> = {}): string {
    return this.node(op, inputs, attrs, 1)[0];
  }

  /** Rename the last node's output to a graph output name. */
  output(value: string, name: string): string {
    for (const n of this.nodes) n.output = n.output.map((o) => (o === value ? name : o));
    for (const n of this.nodes) n.input = n.input.map((i) => (i === value ? name : i));
    return name;
  }
}

function attr(name: string, v: AttrValue): AttrMsg {
  if (typeof v === 'number') return { name, type: AT.INT, i: v };
  if (typeof v === 'string') return { name, type: AT.STRING, s: new TextEncoder().encode(v) };
  if (Array.isArray(v)) return { name, type: AT.INTS, ints: v };
  if ('float' in v) return { name, type: AT.FLOAT, f: v.float };
  if ('floats' in v) return { name, type: AT.FLOATS, floats: v.floats };
  return { name, type: AT.TENSOR, t: v.tensor };
}
