/**
 * Core's quick test files, run in one process: each of them takes well under
 * two seconds, less than tap's start-up per file (a node process, ts-node and
 * tap's loaders: ~2.5 s of CPU on the CI machine), so one process for all of
 * them saves about a minute of CPU per CI run. They stay ordinary test files:
 * `npx tap test/tensor-nn.test.ts` runs one alone. package.json's tap
 * `exclude` keeps tap from running them a second time; the last test of this file
 * checks that this list and that one name the same files, so that no file is
 * excluded without being run here.
 *
 * Their top-level tests run in this order, each file's after the one before;
 * files that change process state (an environment variable, the kernel
 * backend) restore it in a teardown or finally, as they did alone.
 */
import t from 'tap';
import { checkQuickFiles } from '../../../scripts/tap-quick-files.mjs';

const FILES = ["adapters-manifest", "edit-null-space", "edit-recipes", "edit-steer", "fixtures-models", "merge-bundles", "merge-methods", "merge-negation", "metrics-gates", "metrics-generation", "metrics-routing", "metrics-scoring", "models-arch", "models-behaviour", "models-golden", "models-load", "models-lora-peft", "models-spelling", "records-inputs", "records-io", "records-kinds", "records-schema", "registry-cas", "tensor-autograd", "tensor-device", "tensor-elementwise", "tensor-fused", "tensor-linalg", "tensor-nn"];

checkQuickFiles(t, FILES, import.meta.url);

import './adapters-manifest.test.js';
import './edit-null-space.test.js';
import './edit-recipes.test.js';
import './edit-steer.test.js';
import './fixtures-models.test.js';
import './merge-bundles.test.js';
import './merge-methods.test.js';
import './merge-negation.test.js';
import './metrics-gates.test.js';
import './metrics-generation.test.js';
import './metrics-routing.test.js';
import './metrics-scoring.test.js';
import './models-arch.test.js';
import './models-behaviour.test.js';
import './models-golden.test.js';
import './models-load.test.js';
import './models-lora-peft.test.js';
import './models-spelling.test.js';
import './records-inputs.test.js';
import './records-io.test.js';
import './records-kinds.test.js';
import './records-schema.test.js';
import './registry-cas.test.js';
import './tensor-autograd.test.js';
import './tensor-device.test.js';
import './tensor-elementwise.test.js';
import './tensor-fused.test.js';
import './tensor-linalg.test.js';
import './tensor-nn.test.js';
