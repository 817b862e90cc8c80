/**
 * Arrow mapping of record streams.
 *
 * An Arrow IPC stream has one schema, but a record stream mixes kinds. The
 * schema is:
 *
 *   kind     Utf8 (not null)          every record's kind
 *   record   DenseUnion<fact: Struct<…>, probe: Struct<…>, locus, adapter,
 *            report, route, other: Null>
 *                                     the declared fields (schema.ts) of the
 *                                     row's kind; `other` for every other kind (the registry's included)
 *   extra    Utf8 (nullable)          JSON text of an object holding every other field
 *
 * A dense union keeps each kind's struct column as long as the number of
 * records of that kind, so a stream of one kind costs nothing for the others.
 * Declared types map as: string/enum → Utf8, number → Float64 (exact for any
 * JSON number), boolean → Bool, list → List, nested object → Struct,
 * string→number object → Map<Utf8, Float64>, tensor → FixedSizeList<Float32>.
 *
 * Lossless by construction: a field goes into its typed column only if its
 * value fits the column exactly (no nulls, no undeclared nested keys, a
 * tensor of the stream's width whose values are all exact float32s);
 * anything else, unknown kinds and undeclared fields included, goes into
 * `extra`. Absent fields are nulls in the struct and are left out again on
 * decoding. Decoding restores the same JSON value (key order: kind, declared
 * fields, then extra fields).
 *
 * Tensor widths are fixed per stream from the first batch (FixedSizeList
 * needs one size per column); tensors of another width go to `extra`.
 *
 * The decoder is generic over Arrow types, so Arrow streams written by other
 * producers are read too: a struct column named after a kind is read as
 * that kind's fields (sparse layout), and any other column (flat columns,
 * Int64, Map, …) becomes a field of the same name.
 */
import {
  Bool,
  DataType,
  Field,
  FixedSizeList,
  Float32,
  Float64,
  List,
  Map_,
  Precision,
  RecordBatch,
  Schema,
  Struct,
  Utf8,
  DenseUnion,
  Null,
  makeData,
  Vector,
  type Data,
} from 'apache-arrow';
import { ARROW_KINDS, KIND_FIELDS, isArrowKind, type AnyRecord, type ArrowKind, type FieldSpec, type FieldType } from './schema.js';

const EXTRA = 'extra';
const KIND = 'kind';

function fits(v: unknown, type: FieldType, widths: Map<string, number>, path: string): boolean {
  switch (type.t) {
    case 'string':
    case 'enum':
      return typeof v === 'string';
    case 'number':
      return typeof v === 'number';
    case 'boolean':
      return typeof v === 'boolean';
    case 'tensor': {
      if (!Array.isArray(v) || v.length !== widths.get(path)) return false;
      for (let i = 0; i < v.length; i++) {
        const x = v[i];
        if (typeof x !== 'number' || Math.fround(x) !== x) return false;
      }
      return true;
    }
    case 'list': {
      if (!Array.isArray(v)) return false;
      for (let i = 0; i < v.length; i++) if (!fits(v[i], type.of, widths, `${path}[]`)) return false;
      return true;
    }
    case 'map': {
      if (typeof v !== 'object' || v === null || Array.isArray(v)) return false;
      const o = v as Record<string, unknown>;
      for (const k in o) if (!fits(o[k], type.of, widths, `${path}{}`)) return false;
      return true;
    }
    case 'struct': {
      if (typeof v !== 'object' || v === null || Array.isArray(v)) return false;
      const o = v as Record<string, unknown>;
      let declared = 0;
      for (const f of type.fields) {
        const x = o[f.name];
        if (x === undefined) continue;
        if (!fits(x, f.type, widths, `${path}.${f.name}`)) return false;
        declared++;
      }
      // An undeclared key (or an explicit undefined) would be lost in the struct.
      return Object.keys(o).length === declared;
    }
  }
}

function arrowType(type: FieldType, widths: Map<string, number>, path: string): DataType {
  switch (type.t) {
    case 'string':
    case 'enum':
      return new Utf8();
    case 'number':
      return new Float64();
    case 'boolean':
      return new Bool();
    case 'tensor':
      return new FixedSizeList(widths.get(path) ?? 1, new Field('item', new Float32(), false));
    case 'list':
      return new List(new Field('item', arrowType(type.of, widths, `${path}[]`), false));
    case 'map':
      return new Map_(
        new Field('entries', new Struct([new Field('key', new Utf8(), false), new Field('value', arrowType(type.of, widths, `${path}{}`), false)]), false) as never,
      );
    case 'struct':
      return new Struct(structFields(type.fields, widths, path));
  }
}

function structFields(fields: FieldSpec[], widths: Map<string, number>, path: string): Field[] {
  return fields.map((f) => new Field(f.name, arrowType(f.type, widths, `${path}.${f.name}`), true));
}

/** Finds the width of every tensor field from sample records (first one seen wins). */
function sampleWidths(rows: readonly AnyRecord[]): Map<string, number> {
  const widths = new Map<string, number>();
  const visit = (v: unknown, type: FieldType, path: string): void => {
    if (v === undefined || v === null) return;
    switch (type.t) {
      case 'tensor':
        if (!widths.has(path) && Array.isArray(v) && v.length > 0) widths.set(path, v.length);
        return;
      case 'list':
        if (Array.isArray(v)) for (const x of v) visit(x, type.of, `${path}[]`);
        return;
      case 'map':
        if (typeof v === 'object') for (const x of Object.values(v as object)) visit(x, type.of, `${path}{}`);
        return;
      case 'struct':
        if (typeof v === 'object') for (const f of type.fields) visit((v as Record<string, unknown>)[f.name], f.type, `${path}.${f.name}`);
        return;
      default:
        return;
    }
  };
  for (const r of rows) {
    if (isArrowKind(r.kind)) for (const f of KIND_FIELDS[r.kind]) visit(r[f.name], f.type, `${r.kind}.${f.name}`);
  }
  return widths;
}

/** Appends JSON values of one declared type and finishes into an Arrow Data. */
interface ColumnBuilder {
  /** Appends a value that fits the type, or null (undefined). */
  append(v: unknown): void;
  finish(): Data;
}

class BitVec {
  bytes = new Uint8Array(64);
  length = 0;
  nulls = 0;
  push(bit: boolean): void {
    if (this.length >> 3 >= this.bytes.length) {
      const b = new Uint8Array(this.bytes.length * 2);
      b.set(this.bytes);
      this.bytes = b;
    }
    if (bit) this.bytes[this.length >> 3] |= 1 << (this.length & 7);
    else this.nulls++;
    this.length++;
  }
  take(): Uint8Array {
    return this.bytes.subarray(0, (this.length + 7) >> 3);
  }
}

class IntVec {
  data = new Int32Array(64);
  length = 0;
  push(x: number): void {
    if (this.length >= this.data.length) {
      const d = new Int32Array(this.data.length * 2);
      d.set(this.data);
      this.data = d;
    }
    this.data[this.length++] = x;
  }
  take(): Int32Array {
    return this.data.subarray(0, this.length);
  }
}

function columnBuilder(type: DataType): ColumnBuilder {
  const validity = new BitVec();
  if (DataType.isUtf8(type)) {
    const strs: string[] = [];
    return {
      append(v) {
        validity.push(v !== undefined);
        strs.push(v === undefined ? '' : (v as string));
      },
      finish() {
        // One join and one UTF-8 encode per column: far cheaper than per value.
        const valueOffsets = new Int32Array(strs.length + 1);
        let at = 0;
        for (let i = 0; i < strs.length; i++) {
          at += Buffer.byteLength(strs[i], 'utf8');
          valueOffsets[i + 1] = at;
        }
        const data = Buffer.from(strs.join(''), 'utf8');
        return makeData({ type, length: strs.length, nullCount: validity.nulls, nullBitmap: validity.nulls ? validity.take() : undefined, valueOffsets, data });
      },
    };
  }
  if (DataType.isFloat(type)) {
    const xs: number[] = [];
    return {
      append(v) {
        validity.push(v !== undefined);
        xs.push(v === undefined ? 0 : (v as number));
      },
      finish() {
        const data = DataType.isFloat(type) && type.precision === Precision.SINGLE ? Float32Array.from(xs) : Float64Array.from(xs);
        return makeData({ type, length: xs.length, nullCount: validity.nulls, nullBitmap: validity.nulls ? validity.take() : undefined, data } as never);
      },
    };
  }
  if (DataType.isBool(type)) {
    const bits = new BitVec();
    return {
      append(v) {
        validity.push(v !== undefined);
        bits.push(v === true);
      },
      finish() {
        return makeData({ type, length: bits.length, nullCount: validity.nulls, nullBitmap: validity.nulls ? validity.take() : undefined, data: bits.take() });
      },
    };
  }
  if (DataType.isList(type) || DataType.isMap(type)) {
    const offsets = new IntVec();
    offsets.push(0);
    let total = 0;
    const isMap = DataType.isMap(type);
    const child = columnBuilder(type.children[0].type);
    return {
      append(v) {
        validity.push(v !== undefined);
        if (v !== undefined) {
          if (isMap) {
            const o = v as Record<string, unknown>;
            for (const k in o) {
              child.append({ key: k, value: o[k] });
              total++;
            }
          } else {
            const a = v as unknown[];
            for (let i = 0; i < a.length; i++) child.append(a[i]);
            total += a.length;
          }
        }
        offsets.push(total);
      },
      finish() {
        const length = offsets.length - 1;
        return makeData({ type, length, nullCount: validity.nulls, nullBitmap: validity.nulls ? validity.take() : undefined, valueOffsets: offsets.take(), child: child.finish() } as never);
      },
    };
  }
  if (DataType.isFixedSizeList(type)) {
    const size = type.listSize;
    const child = columnBuilder(type.children[0].type);
    let length = 0;
    return {
      append(v) {
        validity.push(v !== undefined);
        const a = v as number[] | undefined;
        for (let i = 0; i < size; i++) child.append(a === undefined ? 0 : a[i]);
        length++;
      },
      finish() {
        return makeData({ type, length, nullCount: validity.nulls, nullBitmap: validity.nulls ? validity.take() : undefined, child: child.finish() });
      },
    };
  }
  if (DataType.isStruct(type)) {
    const names = type.children.map((f) => f.name);
    const children = type.children.map((f) => columnBuilder(f.type));
    let length = 0;
    return {
      append(v) {
        validity.push(v !== undefined);
        const o = v as Record<string, unknown> | undefined;
        for (let j = 0; j < children.length; j++) children[j].append(o === undefined ? undefined : o[names[j]]);
        length++;
      },
      finish() {
        return makeData({ type, length, nullCount: validity.nulls, nullBitmap: validity.nulls ? validity.take() : undefined, children: children.map((c) => c.finish()) });
      },
    };
  }
  if (DataType.isNull(type)) {
    let length = 0;
    return {
      append() {
        length++;
      },
      finish() {
        return makeData({ type, length });
      },
    };
  }
  throw new Error(`records/arrow: no column builder for ${String(type)}`);
}

const RECORD = 'record';
const OTHER = 'other';

/**
 * Encodes records into RecordBatches of one fixed schema. Construct it with
 * the first batch's records (they fix the tensor widths).
 */
export class ArrowEncoder {
  readonly schema: Schema;
  private readonly widths: Map<string, number>;
  private readonly union: DenseUnion;
  private readonly rowType: Struct;

  constructor(sample: readonly AnyRecord[]) {
    this.widths = sampleWidths(sample);
    const members: Field[] = ARROW_KINDS.map((kind) => new Field(kind, new Struct(structFields(KIND_FIELDS[kind], this.widths, kind)), false));
    members.push(new Field(OTHER, new Null(), true));
    this.union = new DenseUnion(
      members.map((_, i) => i),
      members,
    );
    const fields: Field[] = [new Field(KIND, new Utf8(), false), new Field(RECORD, this.union, false), new Field(EXTRA, new Utf8(), true)];
    this.schema = new Schema(fields);
    this.rowType = new Struct(fields);
  }

  /** Splits one record into its typed fields (or null) and its extra JSON (or null). */
  private split(rec: AnyRecord): { typed: Record<string, unknown> | null; extra: string | undefined } {
    let extra: Record<string, unknown> | null = null;
    const known = isArrowKind(rec.kind) ? KIND_FIELDS[rec.kind] : null;
    let typed: Record<string, unknown> | null = null;
    if (known) {
      typed = {};
      for (const f of known) {
        const v = rec[f.name];
        if (v === undefined) continue;
        if (fits(v, f.type, this.widths, `${rec.kind}.${f.name}`)) typed[f.name] = v;
        else (extra ??= {})[f.name] = v;
      }
    }
    const declared = known ? DECLARED[rec.kind as ArrowKind] : null;
    for (const k in rec) {
      if (k === KIND || (declared && declared.has(k))) continue;
      const v = rec[k];
      if (v === undefined) continue;
      (extra ??= {})[k] = v;
    }
    return { typed, extra: extra === null ? undefined : JSON.stringify(extra) };
  }

  encode(records: readonly AnyRecord[]): RecordBatch {
    const n = records.length;
    const kindB = columnBuilder(new Utf8());
    const extraB = columnBuilder(new Utf8());
    const members = this.union.children.map((f) => columnBuilder(f.type));
    const counts = new Int32Array(members.length);
    const typeIds = new Int8Array(n);
    const valueOffsets = new Int32Array(n);
    const otherId = members.length - 1;
    for (let i = 0; i < n; i++) {
      const rec = records[i];
      const { typed, extra } = this.split(rec);
      kindB.append(rec.kind);
      extraB.append(extra);
      const id = typed === null ? otherId : ARROW_KINDS.indexOf(rec.kind as ArrowKind);
      typeIds[i] = id;
      valueOffsets[i] = counts[id]++;
      members[id].append(typed === null ? null : typed);
    }
    const union = makeData({ type: this.union, length: n, nullCount: 0, typeIds, valueOffsets, children: members.map((m) => m.finish()) });
    const data = makeData({ type: this.rowType, length: n, nullCount: 0, children: [kindB.finish(), union, extraB.finish()] });
    return new RecordBatch(this.schema, data as never);
  }
}

const DECLARED = Object.fromEntries(ARROW_KINDS.map((k) => [k, new Set(KIND_FIELDS[k].map((f) => f.name))])) as Record<
  ArrowKind,
  Set<string>
>;

// ---------------------------------------------------------------- decoding

function toNumber(v: unknown): unknown {
  if (typeof v === 'bigint') {
    // Int64 from other producers: a JSON number when exact, else a decimal string.
    return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v.toString();
  }
  return v;
}

/** Converts one non-null Arrow value of the given type to plain JSON. */
function toJson(v: unknown, type: DataType): unknown {
  if (DataType.isStruct(type)) {
    const row = v as Record<string, unknown>;
    const out: Record<string, unknown> = {};
    for (const f of type.children) {
      const x = row[f.name];
      if (x !== null && x !== undefined) out[f.name] = toJson(x, f.type);
    }
    return out;
  }
  if (DataType.isList(type) || DataType.isFixedSizeList(type)) {
    const vec = v as Vector;
    const itemType = type.children[0].type;
    if (DataType.isFloat(itemType) || (DataType.isInt(itemType) && itemType.bitWidth < 64)) {
      // Typed array fast path; nulls (validity) are restored below if any.
      const arr = Array.from(vec.toArray() as ArrayLike<number>);
      if (vec.nullCount > 0) for (let j = 0; j < arr.length; j++) if (!vec.isValid(j)) (arr as unknown[])[j] = null;
      return arr;
    }
    const out: unknown[] = new Array(vec.length);
    for (let j = 0; j < vec.length; j++) {
      const x = vec.get(j);
      out[j] = x === null || x === undefined ? null : toJson(x, itemType);
    }
    return out;
  }
  if (DataType.isMap(type)) {
    const valueType = type.children[0].type.children[1].type;
    const out: Record<string, unknown> = {};
    for (const [k, x] of v as Iterable<[unknown, unknown]>) {
      out[String(k)] = x === null || x === undefined ? null : toJson(x, valueType);
    }
    return out;
  }
  if (DataType.isInt(type)) return toNumber(v);
  if (DataType.isFloat(type) || DataType.isUtf8(type) || DataType.isLargeUtf8(type) || DataType.isBool(type)) return v;
  if (DataType.isDictionary(type)) return toJson(v, type.dictionary);
  // Dates, binaries, decimals… from foreign producers: their JSON form.
  return typeof (v as { toJSON?: () => unknown })?.toJSON === 'function' ? (v as { toJSON: () => unknown }).toJSON() : String(v);
}

type Reader = (i: number) => unknown;

/**
 * A reader of one Data (one column of one batch) returning plain JSON, or
 * undefined for null. Built once per batch and column: reading the buffers
 * directly avoids apache-arrow's per-value visitor dispatch and row proxies,
 * which dominate decoding time otherwise.
 */
function compileReader(data: Data): Reader {
  const type = data.type as DataType;
  let read: Reader;
  if (DataType.isUtf8(type)) {
    const offsets = data.valueOffsets as Int32Array;
    const values = data.values as Uint8Array;
    const buf = Buffer.from(values.buffer, values.byteOffset, values.byteLength);
    read = (i) => buf.toString('utf8', offsets[i], offsets[i + 1]);
  } else if ((DataType.isFloat(type) && type.precision !== Precision.HALF) || (DataType.isInt(type) && type.bitWidth < 64)) {
    const values = data.values as ArrayLike<number>;
    read = (i) => values[i];
  } else if (DataType.isBool(type)) {
    const values = data.values as Uint8Array;
    const offset = data.offset;
    read = (i) => ((values[(offset + i) >> 3] >> ((offset + i) & 7)) & 1) === 1;
  } else if (DataType.isStruct(type)) {
    const names = type.children.map((f) => f.name);
    const readers = data.children.map(compileReader);
    read = (i) => {
      const o: Record<string, unknown> = {};
      for (let j = 0; j < readers.length; j++) {
        const x = readers[j](i);
        if (x !== undefined) o[names[j]] = x;
      }
      return o;
    };
  } else if (DataType.isList(type) || DataType.isMap(type)) {
    const offsets = data.valueOffsets as Int32Array;
    const child = compileReader(data.children[0]);
    if (DataType.isMap(type)) {
      read = (i) => {
        const o: Record<string, unknown> = {};
        for (let k = offsets[i]; k < offsets[i + 1]; k++) {
          const e = child(k) as { key: unknown; value?: unknown };
          o[String(e.key)] = e.value === undefined ? null : e.value;
        }
        return o;
      };
    } else {
      read = (i) => {
        const a = offsets[i];
        const out: unknown[] = new Array(offsets[i + 1] - a);
        for (let k = 0; k < out.length; k++) {
          const x = child(a + k);
          out[k] = x === undefined ? null : x;
        }
        return out;
      };
    }
  } else if (DataType.isFixedSizeList(type)) {
    const size = type.listSize;
    const child = compileReader(data.children[0]);
    read = (i) => {
      const out: unknown[] = new Array(size);
      for (let k = 0; k < size; k++) {
        const x = child(i * size + k);
        out[k] = x === undefined ? null : x;
      }
      return out;
    };
  } else if (DataType.isUnion(type)) {
    const typeIds = data.typeIds as Int8Array;
    const dense = DataType.isDenseUnion(type);
    const offsets = data.valueOffsets as Int32Array;
    const toChild = type.typeIdToChildIndex;
    const readers = data.children.map(compileReader);
    read = (i) => readers[toChild[typeIds[i]]](dense ? offsets[i] : i);
    // Unions have no validity bitmap of their own.
    return read;
  } else if (DataType.isNull(type)) {
    return () => undefined;
  } else {
    // Everything else (Int64, dictionaries, dates, large offsets…): the generic path.
    const vec = new Vector([data]);
    read = (i) => {
      const x = vec.get(i);
      return x === null || x === undefined ? undefined : toJson(x, type);
    };
    return read;
  }
  if (data.nullCount === 0) return read;
  return (i) => (data.getValid(i) ? read(i) : undefined);
}

/** Decodes every row of a batch into a record object (plain JSON values). */
export function decodeBatch(batch: RecordBatch): Record<string, unknown>[] {
  const n = batch.numRows;
  const fields = batch.schema.fields;
  const cols = batch.data.children.map(compileReader);
  const kindIdx = fields.findIndex((f) => f.name === KIND);
  const extraIdx = fields.findIndex((f) => f.name === EXTRA && DataType.isUtf8(f.type));
  const kindStruct = new Map<string, Reader>();
  const foreign: number[] = [];
  let recordIdx = -1;
  fields.forEach((f, i) => {
    if (i === kindIdx || i === extraIdx) return;
    if (isArrowKind(f.name) && DataType.isStruct(f.type)) kindStruct.set(f.name, cols[i]);
    else if (f.name === RECORD && DataType.isUnion(f.type)) recordIdx = i;
    else foreign.push(i);
  });
  const out: Record<string, unknown>[] = new Array(n);
  for (let r = 0; r < n; r++) {
    const rec: Record<string, unknown> = {};
    if (kindIdx >= 0) {
      const kind = cols[kindIdx](r);
      if (kind !== undefined) {
        rec.kind = kind;
        const read = typeof kind === 'string' ? kindStruct.get(kind) : undefined;
        if (read) {
          const row = read(r);
          if (row !== undefined) Object.assign(rec, row);
        }
      }
    }
    if (recordIdx >= 0) {
      const row = cols[recordIdx](r);
      if (row !== undefined) Object.assign(rec, row);
    }
    for (const i of foreign) {
      const x = cols[i](r);
      if (x !== undefined) rec[fields[i].name] = x;
    }
    if (extraIdx >= 0) {
      const x = cols[extraIdx](r) as string | undefined;
      if (x !== undefined) assignJson(rec, JSON.parse(x) as Record<string, unknown>);
    }
    out[r] = rec;
  }
  return out;
}

/** Object.assign, except a "__proto__" key stays an own data property. */
function assignJson(target: Record<string, unknown>, src: Record<string, unknown>): void {
  for (const k of Object.keys(src)) {
    if (k === '__proto__') Object.defineProperty(target, k, { value: src[k], enumerable: true, writable: true, configurable: true });
    else target[k] = src[k];
  }
}
