/**
 * Metrics of an edit (what `validate` measures), as a library:
 *
 *   const suite = buildSuite(facts, probes, { retain, general, suite });
 *   const enc = encodeSuite(tokenizer, suite, { maxLength });
 *   const before = observe(model, tokenizer, enc);      // base model
 *   model.setAdapters([{ adapter }]);
 *   const after = observe(model, tokenizer, enc);
 *   const metrics = computeMetrics(enc, before, after);
 *   const verdict = checkGates(metrics, resolveGates([parseGate('efficacy>=0.95')]));
 *
 * Definitions (CounterFact / EasyEdit / ROME) are in tools/validate/README.md.
 */
export * from './scoring.js';
export * from './ngram.js';
export * from './gates.js';
export * from './suite.js';
export * from './evaluate.js';
export * from './routing.js';
export * from './erasure.js';
