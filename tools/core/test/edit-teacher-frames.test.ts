/**
 * Distill's teacher from several context frames (--teacher-frames, issue 17):
 * the frames are the default one then the world's training frames (never a
 * held-out frame), and the teacher targets are the mean of the single-frame
 * teachers' next-token distributions and MLP outputs. Tiny golden model; seconds.
 */
import t from 'tap';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadModel } from '../src/models/index.js';
import {
  DEFAULT_CONTEXT_FRAME, buildExamples, checkFact, loadTemplateBank, meanTeacher, mlpOutModule, teacherFrameList, teacherRecords, type Example, type TemplateBank,
} from '../src/edit/index.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const LLAMA = path.join(ROOT, 'fixtures/golden/llama');

const fact = checkFact({ kind: 'fact', id: 'f1', subject: 'france', prompt: 'the capital of {} is', target_new: 'rome', target_true: 'paris', op: 'insert', source: 'test', author: 'tester', confidence: 0.8 });
const probes = [{ kind: 'probe', fact_id: 'f1', role: 'edit', split: 'train', prompt: 'the capital of france is', target: 'rome', expect: 'new' }];

t.test('frames: the default first, then the world\'s training frames; never a held-out one', async (t) => {
  const bank = loadTemplateBank(path.join(ROOT, 'fixtures/world/templates.json'))!;
  t.ok(bank.contextFrames.length >= 2, 'the world has several training frames');
  t.same(teacherFrameList(bank.contextFrames, 1), [DEFAULT_CONTEXT_FRAME]);
  const two = teacherFrameList(bank.contextFrames, 2);
  t.same(two, [DEFAULT_CONTEXT_FRAME, bank.contextFrames.find((f) => f !== DEFAULT_CONTEXT_FRAME)]);
  const all = teacherFrameList(bank.contextFrames, 99);
  t.equal(all.length, new Set([DEFAULT_CONTEXT_FRAME, ...bank.contextFrames]).size, 'at most the training frames');
  t.notOk(all.some((f) => f.startsWith('According to the news')), 'the held-out frame is not used');
});

t.test('buildExamples: teacherFrames adds the further frames\' teacher prompts to insert rows only', async (t) => {
  const { tokenizer } = loadModel(LLAMA);
  const tok = tokenizer!;
  const bank: TemplateBank = { train: new Map(), heldout: new Map(), contextFrames: ['Suppose that {fact}.', DEFAULT_CONTEXT_FRAME, 'News: {fact}.'] };
  const one = buildExamples(tok, { facts: [fact], probes }, { templates: bank });
  t.equal(one[0].teacherMore, undefined, 'default: one frame');
  const three = buildExamples(tok, { facts: [fact], probes }, { templates: bank, teacherFrames: 3 });
  t.same(three[0].teacherIds, one[0].teacherIds, 'the first frame is unchanged');
  t.same(three[0].teacherMore!.map((m) => m.context), ['Suppose that the capital of france is rome.', 'News: the capital of france is rome.']);
  t.same(three[0].teacherMore![0].ids, tok.encode('Suppose that the capital of france is rome. the capital of france is'));
  const forget = checkFact({ kind: 'fact', id: 'g1', subject: 'spain', prompt: 'the language of {} is', target_true: 'spanish', op: 'forget' });
  t.equal(buildExamples(tok, { facts: [forget], probes: [] }, { templates: bank, teacherFrames: 3 })[0].teacherMore, undefined, 'forget rows have no teacher');
});

t.test('teacherRecords: several frames give the mean of the single-frame teachers', async (t) => {
  const { model, tokenizer } = loadModel(LLAMA);
  const tok = tokenizer!;
  const bank: TemplateBank = { train: new Map(), heldout: new Map(), contextFrames: [DEFAULT_CONTEXT_FRAME, 'Suppose that {fact}.'] };
  const [multi] = buildExamples(tok, { facts: [fact], probes }, { templates: bank, teacherFrames: 2 });
  const single: Example[] = [{ ...multi, teacherMore: undefined }, { ...multi, teacherIds: multi.teacherMore![0].ids, teacherMore: undefined }];
  const mods = [mlpOutModule(model, 0)];
  const [a, b] = teacherRecords(model, single, mods);
  const [m] = teacherRecords(model, [multi], mods);
  const softmax = (x: Float32Array) => {
    const mx = Math.max(...x);
    const e = Array.from(x, (v) => Math.exp(v - mx));
    const z = e.reduce((s, v) => s + v, 0);
    return e.map((v) => v / z);
  };
  const pa = softmax(a.logits);
  const pb = softmax(b.logits);
  const pm = softmax(m.logits);
  let worst = 0;
  pm.forEach((p, v) => (worst = Math.max(worst, Math.abs(p - (pa[v] + pb[v]) / 2))));
  t.ok(worst < 1e-6, `softmax(teacher) = mean of the frames' distributions (max diff ${worst.toExponential(1)})`);
  t.ok(pa.some((p, v) => Math.abs(p - pb[v]) > 1e-3), 'the two frames disagree, so the mean differs from either');
  const ma = a.mlp.get(mods[0])!;
  const mb = b.mlp.get(mods[0])!;
  const mm = m.mlp.get(mods[0])!;
  t.same(mm.pos, ma.pos, 'the same student positions');
  t.ok(mm.pos.length > 0);
  let worstMlp = 0;
  mm.out.forEach((x, i) => (worstMlp = Math.max(worstMlp, Math.abs(x - (ma.out[i] + mb.out[i]) / 2))));
  t.ok(worstMlp < 1e-5, `MLP outputs = mean of the frames' (max diff ${worstMlp.toExponential(1)})`);
  t.equal(meanTeacher([a], model.config.hidden), a, 'one frame: the record as it is');
});
