/**
 * The registry and bundle library of @catechism/core.
 *
 * Bridge: core's package.json does not list `./registry` and `./adapters` in
 * its exports yet (the lead adds them, with `export *` lines in core's
 * src/index.ts). Until then this imports core's built dist by path; the
 * dependency on @catechism/core in package.json keeps the build order right.
 * When the exports exist, replace both lines with re-exports from
 * '@catechism/core'.
 */
export * from '../../core/dist/registry/index.js';
export * from '../../core/dist/adapters/index.js';
