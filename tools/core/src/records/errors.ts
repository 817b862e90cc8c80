/**
 * Errors of the record layer. An InputError is bad input (exit code 2): it
 * carries the input's name, the 1-based record number and the field path so
 * the CLI can render one line such as
 *   probe-gen: facts.ndjson: record 3: field "prompt": expected string, got number
 */
export class InputError extends Error {
  /** Input name as the user gave it (file path, or "stdin"). */
  source?: string;
  /** 1-based record number within that input. */
  record?: number;
  /** Dotted path of the offending field, e.g. "requested_rewrite.target_new.str". */
  field?: string;
  /** The bare description (without source/record/field prefixes). */
  readonly detail: string;

  constructor(detail: string, where: { source?: string; record?: number; field?: string } = {}) {
    super(detail);
    this.name = 'InputError';
    this.detail = detail;
    this.source = where.source;
    this.record = where.record;
    this.field = where.field;
    this.message = this.render();
  }

  /** Fill in the location when a lower layer did not know it. */
  locate(where: { source?: string; record?: number }): this {
    if (this.source === undefined && where.source !== undefined) this.source = where.source;
    if (this.record === undefined && where.record !== undefined) this.record = where.record;
    this.message = this.render();
    return this;
  }

  private render(): string {
    const parts: string[] = [];
    if (this.source !== undefined) parts.push(this.source);
    if (this.record !== undefined) parts.push(`record ${this.record}`);
    if (this.field !== undefined) parts.push(`field "${this.field}"`);
    parts.push(this.detail);
    return parts.join(': ');
  }
}

/** Usage errors (bad flags, unreadable file name) also exit with 2. */
export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

/** Short description of a JSON value's type for "expected X, got Y" messages. */
export function describeType(v: unknown): string {
  if (v === undefined) return 'nothing (field missing)';
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'array';
  return typeof v;
}
