// Shard 1 of 2 of the docs examples (docs-examples.ts says what they check).
import { checkExamplesFound, runExamples, shard } from './docs-examples.js';

checkExamplesFound();
runExamples(shard(0, 2));
