/**
 * An external paraphraser: any command that reads requests as NDJSON on
 * stdin and answers with NDJSON on stdout.
 *
 *   request (one line per fact):  {"id": "<fact id>", "prompt": "<filled prompt>", "template": "<prompt with {}>", "subject": "...", "n": 4}
 *   answer (one line per fact, any order, a fact may be left out):
 *                                 {"id": "<fact id>", "paraphrases": ["...", ...]}
 *
 * A paraphrase may contain the subject or `{}` in its place; one with
 * neither is dropped (it no longer asks about the subject).
 */
import { spawn } from 'node:child_process';

export interface ParaphraseRequest {
  id: string;
  prompt: string;
  template: string;
  subject: string;
  n: number;
}

/** The command failed, hung, or answered something unreadable: a runtime failure (exit 1). */
export class ParaphraserError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ParaphraserError';
  }
}

function lastLines(s: string, n = 3): string {
  const lines = s.trim().split('\n').filter((l) => l.trim() !== '');
  return lines.slice(-n).join(' | ');
}

/** Runs the command once for all requests; resolves fact id → paraphrases (filled with the subject). */
export function runParaphraser(command: string, requests: readonly ParaphraseRequest[], timeoutSeconds: number): Promise<Map<string, string[]>> {
  const name = `--paraphraser ${JSON.stringify(command)}`;
  return new Promise((resolve, reject) => {
    // Own process group, so a timeout kills the shell's children too.
    const child = spawn('sh', ['-c', command], { stdio: ['pipe', 'pipe', 'pipe'], detached: true });
    const out: Buffer[] = [];
    let err = '';
    let settled = false;
    const finish = (e: Error | null, v?: Map<string, string[]>): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (e) reject(e);
      else resolve(v!);
    };
    const timer = setTimeout(() => {
      try {
        process.kill(-child.pid!, 'SIGKILL');
      } catch {
        // already gone
      }
      finish(new ParaphraserError(`${name}: no answer within ${timeoutSeconds}s (--paraphraser-timeout); stopped it`));
    }, timeoutSeconds * 1000);
    child.stdout.on('data', (c: Buffer) => out.push(c));
    child.stderr.on('data', (c: Buffer) => {
      err += c.toString('utf-8');
      if (err.length > 8192) err = err.slice(-4096);
    });
    child.on('error', (e) => finish(new ParaphraserError(`${name}: cannot start (${e.message})`)));
    // A command that exits without reading its input closes the pipe: not our failure to report.
    child.stdin.on('error', () => {});
    child.on('close', (code, signal) => {
      if (settled) return;
      if (signal) return finish(new ParaphraserError(`${name}: killed by ${signal}${err ? `: ${lastLines(err)}` : ''}`));
      if (code !== 0) return finish(new ParaphraserError(`${name}: exited with status ${code}${err ? `: ${lastLines(err)}` : ''}`));
      try {
        finish(null, parseAnswers(Buffer.concat(out).toString('utf-8'), requests, name));
      } catch (e) {
        finish(e as Error);
      }
    });
    child.stdin.end(requests.map((r) => JSON.stringify(r)).join('\n') + (requests.length ? '\n' : ''));
  });
}

export function parseAnswers(text: string, requests: readonly ParaphraseRequest[], name = '--paraphraser'): Map<string, string[]> {
  const byId = new Map(requests.map((r) => [r.id, r]));
  const result = new Map<string, string[]>();
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i].trim();
    if (line === '') continue;
    let v: unknown;
    try {
      v = JSON.parse(line);
    } catch {
      throw new ParaphraserError(`${name}: output line ${i + 1} is not JSON: ${JSON.stringify(line.slice(0, 80))} (expected {"id": ..., "paraphrases": [...]})`);
    }
    const o = v as Record<string, unknown>;
    if (typeof o !== 'object' || o === null || Array.isArray(o) || typeof o.id !== 'string' || !Array.isArray(o.paraphrases) || o.paraphrases.some((p) => typeof p !== 'string')) {
      throw new ParaphraserError(`${name}: output line ${i + 1}: expected {"id": "<fact id>", "paraphrases": ["...", ...]}, got ${JSON.stringify(line.slice(0, 80))}`);
    }
    const req = byId.get(o.id);
    if (!req) throw new ParaphraserError(`${name}: output line ${i + 1}: unknown id ${JSON.stringify(o.id)} (not one of the facts asked about)`);
    const list = result.get(o.id) ?? [];
    for (const p of o.paraphrases as string[]) {
      const filled = p.split('{}').join(req.subject).trim();
      if (filled !== '' && filled.includes(req.subject)) list.push(filled);
    }
    result.set(o.id, list);
  }
  return result;
}
