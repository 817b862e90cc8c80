/**
 * Arrow mapping of record streams.
 *
 * An Arrow IPC stream has one schema, but a record stream mixes kinds. The
 * schema is:
 *
 *   kind     Utf8 (not null)       every record's kind
 *   fact     Struct<…> (nullable)  the declared fields of a `fact` (schema.ts), null on other rows
 *   probe    Struct<…>             likewise for probe, locus, adapter, report, route
 *   …
 *   extra    Utf8 (nullable)       JSON text of an object holding every other field
 *
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
 * producers (flat columns, Int64, Map, …) are read too: any column other than
 * `kind`/`extra`/the kind structs becomes a field of the same name.
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
  RecordBatch,
  Schema,
  Struct,
  Utf8,
  makeBuilder,
  type Vector,
} from 'apache-arrow';
import { KIND_FIELDS, KNOWN_KINDS, isKnownKind, type AnyRecord, type FieldSpec, type FieldType } from './schema.js';

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
    if (isKnownKind(r.kind)) for (const f of KIND_FIELDS[r.kind]) visit(r[f.name], f.type, `${r.kind}.${f.name}`);
  }
  return widths;
}

/**
 * Encodes records into RecordBatches of one fixed schema. Construct it with
 * the first batch's records (they fix the tensor widths).
 */
export class ArrowEncoder {
  readonly schema: Schema;
  private readonly widths: Map<string, number>;
  private readonly rowType: Struct;

  constructor(sample: readonly AnyRecord[]) {
    this.widths = sampleWidths(sample);
    const fields: Field[] = [new Field(KIND, new Utf8(), false)];
    for (const kind of KNOWN_KINDS) {
      fields.push(new Field(kind, new Struct(structFields(KIND_FIELDS[kind], this.widths, kind)), true));
    }
    fields.push(new Field(EXTRA, new Utf8(), true));
    this.schema = new Schema(fields);
    this.rowType = new Struct(fields);
  }

  /** Splits one record into its typed struct (or null) and its extra JSON (or null). */
  private split(rec: AnyRecord): Record<string, unknown> {
    const row: Record<string, unknown> = { [KIND]: rec.kind };
    let extra: Record<string, unknown> | null = null;
    const known = isKnownKind(rec.kind) ? KIND_FIELDS[rec.kind] : null;
    const typed: Record<string, unknown> | null = known ? {} : null;
    const declared = known ? new Set(known.map((f) => f.name)) : null;
    if (known && typed) {
      for (const f of known) {
        const v = rec[f.name];
        if (v === undefined) continue;
        if (fits(v, f.type, this.widths, `${rec.kind}.${f.name}`)) typed[f.name] = v;
        else (extra ??= {})[f.name] = v;
      }
      row[rec.kind] = typed;
    }
    for (const k in rec) {
      if (k === KIND || (declared && declared.has(k))) continue;
      const v = rec[k];
      if (v === undefined) continue;
      (extra ??= {})[k] = v;
    }
    row[EXTRA] = extra === null ? null : JSON.stringify(extra);
    return row;
  }

  encode(records: readonly AnyRecord[]): RecordBatch {
    const builder = makeBuilder({ type: this.rowType, nullValues: [null, undefined] });
    for (const rec of records) builder.append(this.split(rec) as never);
    const data = builder.finish().flush();
    return new RecordBatch(this.schema, data as never);
  }
}

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

/** Decodes every row of a batch into a record object (plain JSON values). */
export function decodeBatch(batch: RecordBatch): Record<string, unknown>[] {
  const n = batch.numRows;
  const fields = batch.schema.fields;
  const cols = fields.map((_, i) => batch.getChildAt(i)!);
  const kindIdx = fields.findIndex((f) => f.name === KIND);
  const extraIdx = fields.findIndex((f) => f.name === EXTRA && DataType.isUtf8(f.type));
  const kindStruct = new Map<string, number>();
  const foreign: number[] = [];
  fields.forEach((f, i) => {
    if (i === kindIdx || i === extraIdx) return;
    if (isKnownKind(f.name) && DataType.isStruct(f.type)) kindStruct.set(f.name, i);
    else foreign.push(i);
  });
  const out: Record<string, unknown>[] = new Array(n);
  for (let r = 0; r < n; r++) {
    const rec: Record<string, unknown> = {};
    if (kindIdx >= 0) {
      const kind = cols[kindIdx].get(r);
      if (kind !== null && kind !== undefined) {
        rec.kind = toJson(kind, fields[kindIdx].type);
        const si = kindStruct.get(rec.kind as string);
        if (si !== undefined) {
          const row = cols[si].get(r);
          if (row !== null && row !== undefined) Object.assign(rec, toJson(row, fields[si].type));
        }
      }
    }
    for (const i of foreign) {
      const x = cols[i].get(r);
      if (x !== null && x !== undefined) rec[fields[i].name] = toJson(x, fields[i].type);
    }
    if (extraIdx >= 0) {
      const x = cols[extraIdx].get(r) as string | null;
      if (x !== null && x !== undefined) Object.assign(rec, JSON.parse(x));
    }
    out[r] = rec;
  }
  return out;
}
