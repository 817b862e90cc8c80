// Preload that picks the kernels' backend for a whole Node process from the
// environment, for scripts that have no --device flag of their own (benches):
//   CATECHISM_BACKEND=cuda node --import ./kernels/scripts/use-backend.mjs scripts/bench/models.bench.mjs ...
// CATECHISM_BACKEND is cpu, cuda or cuda-sim; unset leaves the default (cpu).
import { setBackend } from '../dist/index.js';

const b = process.env.CATECHISM_BACKEND;
if (b) setBackend(b);
