// Preloaded into every test process by each package's tap config ("node-arg").
//
// tap's @tapjs/processinfo follows every child process a test spawns: it hooks
// ChildProcess#spawn and puts `--import=@tapjs/processinfo/import` into the
// child's NODE_OPTIONS, so each tool process the CLI and pipeline tests start
// (and every node process those start in turn, through bash pipes) also loads
// processinfo and its loader thread: about 0.45 s of CPU per process on the CI
// machine, for hundreds of processes. What it records is only used for
// coverage and `tap --changed`; our configs disable coverage. The test process
// itself is still tracked as before; only its children are no longer
// instrumented. Tool processes then run as they do outside the tests.
// CATECHISM_TAP_TRACK_CHILDREN=1 keeps tap's default (for coverage of children).
const key = Symbol.for('process-on-spawn@*:singletonId');
const state = globalThis[key];
const track = process.env.CATECHISM_TAP_TRACK_CHILDREN === '1';
if (!track && state && Array.isArray(state.listeners)) state.listeners.length = 0;

const options = track ? undefined : process.env.NODE_OPTIONS;
if (options) {
  const kept = options
    .split(/\s+/)
    .filter((o) => o !== '' && !/@tapjs[\\/]processinfo/.test(o))
    .join(' ');
  if (kept) process.env.NODE_OPTIONS = kept;
  else delete process.env.NODE_OPTIONS;
}
