// Shard 2 of 2 of the docs examples (docs-examples.ts says what they check).
import { runExamples, shard } from './docs-examples.js';

runExamples(shard(1, 2));
