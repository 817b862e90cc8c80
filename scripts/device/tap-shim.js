// A minimal stand-in for tap (scripts/device/prepare.sh installs it as .devcarry/node_modules/tap).
// Runs t.test bodies in order, prints TAP-like lines, counts, sets the exit code: enough for
// kernels/test/cuda.test.ts and core/test/tensor-device.test.ts on a machine without the registry.
import { isDeepStrictEqual } from 'node:util';
let pass = 0, fail = 0, skipped = 0;
const queue = [];
function mk(depth) {
  const pad = '    '.repeat(depth);
  const say = (ok, msg, extra) => { ok ? pass++ : fail++; console.log(`${pad}${ok ? 'ok' : 'not ok'} - ${msg ?? ''}${!ok && extra ? `\n${pad}  # ${extra}` : ''}`); return ok; };
  const sub = [];
  const t = {
    ok: (v, m) => say(!!v, m), notOk: (v, m) => say(!v, m), pass: (m) => say(true, m), fail: (m) => say(false, m),
    equal: (a, b, m) => say(Object.is(a, b) || a === b, m, `got ${String(a)} want ${String(b)}`),
    not: (a, b, m) => say(a !== b, m),
    same: (a, b, m) => say(isDeepStrictEqual(JSON.parse(JSON.stringify(a)), JSON.parse(JSON.stringify(b))), m, `got ${JSON.stringify(a)?.slice(0, 200)} want ${JSON.stringify(b)?.slice(0, 200)}`),
    match: (a, p, m) => say(p instanceof RegExp ? p.test(String(a)) : typeof p === 'string' ? String(a).includes(p) : Object.entries(p).every(([k, v]) => isDeepStrictEqual(a?.[k], v)), m, `got ${String(a)?.slice(0, 200)}`),
    throws: (fn, p, m) => {
      try { fn(); } catch (e) {
        const msg = String(e?.message ?? e);
        const ok = p === undefined || typeof p === 'string' ? true : p instanceof RegExp ? p.test(msg) : p.message === undefined || (p.message instanceof RegExp ? p.message.test(msg) : p.message === msg);
        return say(ok, typeof p === 'string' ? p : m, `threw ${msg}`);
      }
      return say(false, typeof p === 'string' ? p : m, 'did not throw');
    },
    comment: (...a) => console.log(`${pad}# ${a.join(' ')}`),
    teardown: () => {}, plan: () => {}, end: () => {},
    test: (name, opts, fn) => { if (typeof opts === 'function') { fn = opts; opts = {}; } sub.push({ name, opts: opts ?? {}, fn }); },
  };
  t.skip = (name, _o, _f) => { skipped++; console.log(`${pad}ok - ${name} # SKIP`); };
  return { t, sub, pad };
}
async function runList(list, depth) {
  for (const { name, opts, fn } of list) {
    const pad = '    '.repeat(depth);
    if (opts.skip) { skipped++; console.log(`${pad}ok - ${name} # SKIP ${opts.skip}`); continue; }
    console.log(`${pad}# Subtest: ${name}`);
    const { t, sub } = mk(depth + 1);
    const before = fail;
    try { await fn(t); await runList(sub, depth + 1); } catch (e) { fail++; console.log(`${pad}    not ok - threw: ${e?.stack ?? e}`); }
    console.log(`${pad}${fail === before ? 'ok' : 'not ok'} - ${name}`);
  }
}
const root = mk(0);
root.t.test = (name, opts, fn) => { if (typeof opts === 'function') { fn = opts; opts = {}; } queue.push({ name, opts: opts ?? {}, fn }); };
setImmediate(async () => {
  await runList(queue, 0);
  console.log(`# pass ${pass}, fail ${fail}, skipped ${skipped}`);
  process.exitCode = fail ? 1 : 0;
});
export default root.t;
