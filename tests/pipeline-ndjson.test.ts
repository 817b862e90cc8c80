// insert, consolidate, rollback and forget through real pipes, NDJSON between the tools (pipeline-helpers.ts).
import t from 'tap';
import { suite } from './pipeline-helpers.js';

suite(t, 'ndjson');
