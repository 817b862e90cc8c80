#!/usr/bin/env node
/**
 * probe-gen: facts in (fact records, CounterFact or zsRE), each fact and its
 * probes out; every other record passes through in order.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { InputError, UsageError, findModelDir, fixtureWorldOf, packageVersion, runTool, spellingScreen } from '@catechism/core/cli';
import type { Rng } from '@catechism/core';
import { worldDir } from '@catechism/core/fixtures';
import { isFact, readRecords, type AnyRecord, type Fact, type InputRecord, type ProbeRole } from '@catechism/core/records';
import { entryFor, loadBank, type TemplateBank } from './bank.js';
import { ALL_ROLES, checkFact, editTarget, generateAll, hash32, type KbEntry } from './generator.js';
import { alreadyAnswers, cannotEncode, generateContexts, loadLm, loadTokenizerCheck, type TokenizerCheck } from './model.js';
import { runParaphraser } from './paraphraser.js';
import { expandRecord, fillPrompt } from './probes.js';
import { isKind } from '@catechism/core/records';

interface Args {
  passthrough: boolean;
  facts: boolean;
  roles: string;
  templates?: string;
  paraphraser?: string;
  'paraphraser-timeout': number;
  paraphrases: number;
  'paraphrase-test-fraction': number;
  'max-paraphrases': number;
  contexts: number;
  'context-length': number;
  kb?: string;
  neighbors: number;
  'train-neighbors': number;
  generations: number;
  'forget-target': 'abstain' | 'any';
  'abstain-text': string;
  general?: string;
  replay: number;
  'on-conflict'?: 'last' | 'fail';
  'check-known': boolean;
  'skip-known': boolean;
  tokenizer?: string;
}

function parseRoles(text: string): Set<ProbeRole> {
  if (text.trim() === 'all') return new Set(ALL_ROLES);
  const roles = new Set<ProbeRole>();
  for (const r of text.split(',').map((s) => s.trim()).filter(Boolean)) {
    if (!(ALL_ROLES as readonly string[]).includes(r)) throw new UsageError(`--roles: unknown role ${JSON.stringify(r)} (roles: ${ALL_ROLES.join(', ')}, or all)`);
    roles.add(r as ProbeRole);
  }
  if (roles.size === 0) throw new UsageError('--roles: name at least one role (or all)');
  return roles;
}

function check(cond: boolean, message: string): void {
  if (!cond) throw new UsageError(`${message} (see --help)`);
}

const none = (v: string | undefined): boolean => v === 'none' || v === '';

async function readKb(file: string, bank: TemplateBank | null): Promise<KbEntry[]> {
  if (!fs.existsSync(file)) throw new UsageError(`--kb ${file}: no such file`);
  const out: KbEntry[] = [];
  for await (const { record } of readRecords([file], { validate: false })) {
    // Known facts need no target_new (the schema's one fact definition, rules for known facts).
    if (!isFact(record, { known: true })) continue;
    const f = record;
    if (f.target_true === undefined) continue;
    const relation = typeof f.relation === 'string' ? f.relation : typeof f.prompt === 'string' ? entryFor(bank, undefined, f.prompt)?.relation : undefined;
    if (relation !== undefined && f.op !== 'forget') out.push({ id: f.id, subject: f.subject, relation, target: f.target_true });
  }
  return out;
}

/** General text: NDJSON records with `prompt` or `text` (e.g. the world's eval/general.ndjson), or a .txt file, one document per line. */
async function readGeneral(file: string): Promise<string[]> {
  if (!fs.existsSync(file)) throw new UsageError(`--general ${file}: no such file`);
  if (file.endsWith('.txt')) return fs.readFileSync(file, 'utf-8').split('\n').filter((l) => l.trim() !== '');
  const out: string[] = [];
  for await (const { record } of readRecords([file], { validate: false })) {
    const t = typeof record.prompt === 'string' ? record.prompt : typeof record.text === 'string' ? record.text : undefined;
    if (t !== undefined) out.push(t);
  }
  return out;
}

function modelDirOf(dir: string | undefined): string {
  return findModelDir(dir).dir;
}

/** Every target the probes will use must encode to some tokens, when a tokenizer is loaded (unknown words: spellingScreen). */
function checkTargets(records: readonly InputRecord[], tok: TokenizerCheck, dir: string): void {
  for (const r of records) {
    const f = r.record;
    if (!isKind(f, 'fact')) continue;
    for (const k of ['target_new', 'target_true'] as const) {
      const t = f[k];
      if (t === undefined || t.trim() === '') continue;
      if (tok.tokenizer.encode(` ${t}`, { addSpecialTokens: false }).length === 0) {
        throw new InputError(`target ${JSON.stringify(t)} encodes to no tokens (tokenizer of ${dir})`, { source: r.source, record: r.index, field: k });
      }
    }
  }
}

await runTool<Args>({
  name: 'probe-gen',
  version: packageVersion(import.meta.url),
  describe:
    'Turns facts into probes, the data that teaches and tests each edit. With --roles edit (the default) it streams: each fact (normalised) and one "edit" probe ' +
    '(the prompt with the subject filled in; target_new, expect "new"; for op "forget": target_true, expect "abstain"). ' +
    'With more roles (--roles all) it reads the whole stream and also writes paraphrase, context, neighborhood, counterfactual, generation and general probes, ' +
    'split into train and test so that nothing tested is trained on. CounterFact and zsRE records are accepted as facts. Other records pass through unchanged, in order.',
  examples: [
    ['probe-gen facts.ndjson > probes.ndjson', 'edit probes for the facts in a file (streaming)'],
    ['probe-gen --roles all fixtures/world/edits.ndjson', 'every probe role for the fixture world edits'],
    ['probe-gen --roles all --contexts 5 --check-known --model DIR facts.ndjson', 'with model-generated context prefixes, flagging facts the model already knows'],
    ["probe-gen --roles edit,paraphrase --paraphraser 'my-llm --ndjson' facts.ndjson", 'paraphrases from an external command'],
    ['probe-gen counterfact.json --format arrow > probes.arrow', 'a CounterFact JSON array, written as an Arrow IPC stream'],
    ['probe-gen --passthrough in.arrow > out.ndjson', 'copy records (validated) without generating probes'],
  ],
  options: {
    passthrough: { type: 'boolean', default: false, describe: 'copy every record (normalised and validated) without generating probes' },
    facts: { type: 'boolean', default: true, describe: 'write each fact before its probes (--no-facts: probes only)' },
    roles: { type: 'string', default: 'edit', describe: `probe roles to write, comma-separated, or "all" (${ALL_ROLES.join(', ')}); anything beyond edit reads the whole stream first`, group: 'Roles:' },
    templates: { type: 'string', describe: 'template bank (JSON) for paraphrases and generation prompts; default: the fixture world\'s templates.json; "none": no bank', group: 'Paraphrases:' },
    paraphraser: { type: 'string', describe: 'external paraphraser command (sh -c): NDJSON requests on its stdin, NDJSON paraphrases on its stdout (see README)', group: 'Paraphrases:' },
    'paraphraser-timeout': { type: 'number', default: 60, describe: 'seconds the paraphraser may take in all before it is stopped (a failure)', group: 'Paraphrases:' },
    paraphrases: { type: 'number', default: 4, describe: 'paraphrases to ask the paraphraser for, per fact', group: 'Paraphrases:' },
    'paraphrase-test-fraction': { type: 'number', default: 0.5, describe: 'share of each fact\'s external paraphrases kept for testing (bank held-out templates and the input\'s own paraphrases are always test)', group: 'Paraphrases:' },
    'max-paraphrases': { type: 'number', default: 0, describe: 'at most this many train paraphrases per fact from the bank, seeded choice (0: all)', group: 'Paraphrases:' },
    contexts: { type: 'number', default: 0, describe: 'context prefixes to generate with the model (ROME-style), each giving a context probe per fact; > 0 loads the model', group: 'Context:' },
    'context-length': { type: 'number', default: 10, describe: 'tokens per generated context prefix', group: 'Context:' },
    kb: { type: 'string', describe: 'knowledge base of facts (NDJSON) for neighbourhood probes; default: the fixture world\'s facts.ndjson; "none": only the stream\'s own facts', group: 'Neighbourhood:' },
    neighbors: { type: 'number', default: 5, describe: 'neighbourhood probes per fact for testing (other subjects, same relation, same original answer)', group: 'Neighbourhood:' },
    'train-neighbors': { type: 'number', default: 2, describe: 'further neighbourhood probes per fact for training (answers to preserve), disjoint from the test ones', group: 'Neighbourhood:' },
    'forget-target': { choices: ['abstain', 'any'], default: 'any', describe: 'what a forgotten fact becomes: abstain (teach --abstain-text) or any (any answer but the forgotten one)', group: 'Counterfactual:' },
    'abstain-text': { type: 'string', default: 'unknown', describe: 'the abstention answer taught with --forget-target abstain', group: 'Counterfactual:' },
    generations: { type: 'number', default: 3, describe: 'open generation prompts about the subject per fact', group: 'Generation:' },
    general: { type: 'string', describe: 'general text for retention/replay probes (NDJSON with prompt or text, or .txt lines); default: the fixture world\'s eval/general.ndjson; "none": no general probes', group: 'General:' },
    replay: { type: 'number', default: 0.25, describe: 'general probes to mix into training, as a share of the number of train probes', group: 'General:' },
    'on-conflict': { choices: ['last', 'fail'], describe: 'facts with the same subject and relation but different targets: keep the last (default when probes beyond edit are made) or fail; given, it turns on checking in edit-only mode too', group: 'Checks:' },
    'check-known': { type: 'boolean', default: false, describe: 'load the model and flag facts it already answers as asked (already_known on the fact and its probes)', group: 'Checks:' },
    'skip-known': { type: 'boolean', default: false, describe: 'with --check-known: write no probes for facts the model already knows (the fact is still written, flagged)', group: 'Checks:' },
    tokenizer: { type: 'string', describe: 'model directory whose tokenizer must encode every target (also implied by --model)', group: 'Checks:' },
  },
  async run(ctx) {
    const a = ctx.args;
    const roles = parseRoles(a.roles);
    check(Number.isInteger(a.contexts) && a.contexts >= 0, '--contexts: expected a whole number >= 0');
    check(Number.isInteger(a['context-length']) && a['context-length'] >= 1, '--context-length: expected a whole number >= 1');
    check(Number.isInteger(a.neighbors) && a.neighbors >= 0, '--neighbors: expected a whole number >= 0');
    check(Number.isInteger(a['train-neighbors']) && a['train-neighbors'] >= 0, '--train-neighbors: expected a whole number >= 0');
    check(Number.isInteger(a.generations) && a.generations >= 0, '--generations: expected a whole number >= 0');
    check(Number.isInteger(a.paraphrases) && a.paraphrases >= 1, '--paraphrases: expected a whole number >= 1');
    check(Number.isInteger(a['max-paraphrases']) && a['max-paraphrases'] >= 0, '--max-paraphrases: expected a whole number >= 0');
    check(a['paraphrase-test-fraction'] >= 0 && a['paraphrase-test-fraction'] <= 1, '--paraphrase-test-fraction: expected a number from 0 to 1');
    check(a['paraphraser-timeout'] > 0, '--paraphraser-timeout: expected seconds > 0');
    check(a.replay >= 0 && Number.isFinite(a.replay), '--replay: expected a number >= 0');
    check(a['abstain-text'].trim() !== '', '--abstain-text: must not be empty');
    // Flags that only make sense with a role bring the role along.
    if (a.contexts > 0) roles.add('context');
    if (a.paraphraser !== undefined) roles.add('paraphrase');

    if (a['skip-known']) a['check-known'] = true;
    const needModel = (roles.has('context') && a.contexts > 0) || a['check-known'];
    const tokDir = a.tokenizer ?? (a.model !== undefined || needModel ? modelDirOf(a.model) : undefined);
    if (a.tokenizer !== undefined && !fs.existsSync(path.join(a.tokenizer, 'tokenizer.json'))) throw new UsageError(`--tokenizer ${a.tokenizer}: no tokenizer.json there`);
    const tok = tokDir !== undefined ? await loadTokenizerCheck(tokDir) : null;
    // Answers the model cannot spell are refused (or skipped, or allowed) before any probe is made.
    const screen = tok && !a.passthrough ? spellingScreen(ctx, tok.tokenizer) : null;
    const screened = (batch: InputRecord[]): InputRecord[] => (screen ? batch.filter((r) => screen.keep(r)) : batch);

    const streaming = [...roles].every((r) => r === 'edit') && !a['check-known'] && a['on-conflict'] === undefined;
    if (streaming || a.passthrough) {
      // Batch by batch: the per-record work is synchronous, the awaits are per batch.
      for await (const read of ctx.readBatches()) {
        ctx.progress.tick(read.length);
        const batch = screened(read);
        const out: AnyRecord[] = [];
        if (!a.passthrough && tok) checkTargets(batch, tok, tokDir!);
        for (const { record, source, index } of batch) {
          if (a.passthrough) {
            out.push(record);
            continue;
          }
          if (record.kind === 'fact') {
            try {
              checkFact(record);
            } catch (e) {
              if (!(e instanceof InputError)) throw e;
              ctx.reject({ source, index, record }, e); // throws unless --on-bad-record skip
              continue;
            }
          }
          expandRecord(record, out, { keepFacts: a.facts });
        }
        await ctx.out.writeBatch(out);
      }
      screen?.finish();
      return;
    }

    // The full generator: the whole stream first.
    let records: InputRecord[] = [];
    for await (const batch of ctx.readBatches()) {
      ctx.progress.tick(batch.length);
      records.push(...screened(batch));
    }
    screen?.finish();
    const facts: Array<{ fact: Fact; at: InputRecord }> = [];
    const rejected = new Set<InputRecord>();
    for (const r of records) {
      if (r.record.kind !== 'fact') continue;
      let fact: Fact;
      try {
        fact = checkFact(r.record);
      } catch (e) {
        if (!(e instanceof InputError)) throw e;
        ctx.reject(r, e); // throws unless --on-bad-record skip
        rejected.add(r);
        continue;
      }
      facts.push({ fact, at: r });
    }
    if (rejected.size > 0) records = records.filter((r) => !rejected.has(r));
    if (tok) {
      checkTargets(records, tok, tokDir!);
      if (roles.has('counterfactual') && a['forget-target'] === 'abstain' && facts.some((f) => f.fact.op === 'forget')) {
        const why = cannotEncode(tok, a['abstain-text']);
        if (why) throw new UsageError(`--abstain-text ${JSON.stringify(a['abstain-text'])} ${why} (tokenizer of ${tokDir}); pass a word the model knows, or --forget-target any`);
      }
    }
    const makeRng = (seed: number): Rng => new (ctx.rng.constructor as new (s: number) => Rng)(seed); // core's Rng without importing the tensor package

    const worldFile = (name: string): string | undefined => {
      try {
        // a bundled fixture model's own world (dense-b: world-b); else the default world
        const f = path.join((a.model !== undefined ? fixtureWorldOf(a.model) : null) ?? worldDir(), name);
        return fs.existsSync(f) ? f : undefined;
      } catch {
        return undefined; // no fixtures directory (installed elsewhere): no built-in default
      }
    };
    const needBank = roles.has('paraphrase') || roles.has('generation') || roles.has('neighborhood');
    const bankFile = none(a.templates) ? undefined : (a.templates ?? (needBank ? worldFile('templates.json') : undefined));
    const bank = bankFile !== undefined ? loadBank(bankFile) : null;
    const kbFile = none(a.kb) || !roles.has('neighborhood') ? undefined : (a.kb ?? worldFile('facts.ndjson'));
    const kb = kbFile !== undefined ? await readKb(kbFile, bank) : [];
    const generalFile = none(a.general) || !roles.has('general') ? undefined : (a.general ?? worldFile('eval/general.ndjson'));
    const general = generalFile !== undefined ? await readGeneral(generalFile) : [];

    let paraphrases: Map<string, string[]> | undefined;
    if (a.paraphraser !== undefined && facts.length > 0) {
      const requests = facts.map(({ fact: f }) => ({ id: f.id, prompt: fillPrompt(f.prompt, f.subject), template: f.prompt, subject: f.subject, n: a.paraphrases }));
      paraphrases = await runParaphraser(a.paraphraser, requests, a['paraphraser-timeout']);
      const n = [...paraphrases.values()].reduce((s, l) => s + l.length, 0);
      ctx.log(`paraphraser: ${n} paraphrase(s) for ${paraphrases.size} of ${facts.length} fact(s)`);
    }

    let contexts: string[] = [];
    let known: Set<string> | undefined;
    if (needModel && facts.length > 0) {
      const lm = await loadLm(ctx);
      if (roles.has('context') && a.contexts > 0) {
        const starts = [...new Set(facts.map(({ fact: f }) => fillPrompt(f.prompt, f.subject).split(/\s+/)[0]).filter(Boolean))].sort();
        contexts = generateContexts(lm, a.contexts, a['context-length'], starts, makeRng((a.seed ^ hash32('\u0000contexts')) >>> 0));
      }
      if (a['check-known']) {
        const items = facts.filter(({ fact: f }) => f.op !== 'forget').map(({ fact: f }) => ({ id: f.id, prompt: fillPrompt(f.prompt, f.subject), target: editTarget(f).target }));
        const flags = alreadyAnswers(lm, items);
        known = new Set(items.filter((_, i) => flags[i]).map((it) => it.id));
      }
    }

    const out = generateAll(records, {
      roles,
      seed: a.seed,
      makeRng,
      bank,
      kb,
      paraphrases,
      paraphraseTestFraction: a['paraphrase-test-fraction'],
      maxParaphrases: a['max-paraphrases'],
      contexts,
      neighbors: a.neighbors,
      trainNeighbors: a['train-neighbors'],
      generations: a.generations,
      forgetTarget: a['forget-target'],
      abstainText: a['abstain-text'],
      general,
      replay: a.replay,
      onConflict: a['on-conflict'] ?? 'last',
      known,
      skipKnown: a['skip-known'],
      keepFacts: a.facts,
      log: ctx.log,
    });
    for (let i = 0; i < out.length; i += 512) await ctx.out.writeBatch(out.slice(i, i + 512));
  },
});
