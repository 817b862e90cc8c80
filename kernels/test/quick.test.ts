/**
 * kernels's quick test files, run in one process: each of them takes well under
 * two seconds, less than tap's start-up per file (a node process, ts-node and
 * tap's loaders: ~2.5 s of CPU on the CI machine). They stay ordinary test
 * files: `npx tap test/convert.test.ts` runs one alone. package.json's tap
 * `exclude` keeps tap from running them a second time; the last test of this
 * file checks that this list and that one name the same files, so that no file
 * is excluded without being run here. (ES imports run first, in this order.)
 */
import t from 'tap';
import { checkQuickFiles } from '../../scripts/tap-quick-files.mjs';

const FILES = ["convert", "elementwise", "fuzz", "linalg64", "nn", "saturation"];

checkQuickFiles(t, FILES, import.meta.url);

import './convert.test.js';
import './elementwise.test.js';
import './fuzz.test.js';
import './linalg64.test.js';
import './nn.test.js';
import './saturation.test.js';
