// insert, consolidate, rollback and forget through real pipes, Arrow IPC between the tools
// (every writer with --format arrow; every reader detects it) (pipeline-helpers.ts).
import t from 'tap';
import { suite } from './pipeline-helpers.js';

suite(t, 'arrow');
