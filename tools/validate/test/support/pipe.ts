/** Running `probe-gen FACTS | validate ARGS` as the tests do (test support, not shipped). */
import { spawn } from 'node:child_process';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
export const VALIDATE_BIN = path.resolve(here, '../../dist/main.js');
export const PROBE_GEN_BIN = path.resolve(here, '../../../probe-gen/dist/main.js');

/** Pipes probe-gen's output for `factsFile` into validate with `args` (run in `cwd`); resolves with validate's exit code and output. */
export async function probeGenIntoValidate(factsFile: string, args: string[], cwd: string): Promise<{ code: number | null; out: string; err: string }> {
  const pg = spawn(process.execPath, [PROBE_GEN_BIN, factsFile], { stdio: ['ignore', 'pipe', 'inherit'] });
  const va = spawn(process.execPath, [VALIDATE_BIN, ...args], { stdio: ['pipe', 'pipe', 'pipe'], cwd });
  pg.stdout.pipe(va.stdin);
  let out = '';
  let err = '';
  va.stdout.on('data', (d) => (out += d));
  va.stderr.on('data', (d) => (err += d));
  const code = await new Promise<number | null>((res) => va.on('close', res));
  return { code, out, err };
}
