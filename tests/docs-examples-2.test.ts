// The docs' examples, second half (docs-examples.ts).
import { runExamples } from './docs-examples.js';

runExamples(2);
