/**
 * The merge library of @catechism/core (src/merge). Bridge: core's
 * package.json does not export `./merge` yet (the lead adds it); until then
 * this imports core's built dist by path, as core.ts did for the registry.
 * Only merge.ts imports this, and main.ts loads merge.ts lazily, so the
 * registry commands never load the native compute addon.
 */
export * from '../../core/dist/merge/index.js';
