/**
 * The merge library of @catechism/core (src/merge). Only merge.ts imports
 * this, and main.ts loads merge.ts lazily, so the registry commands never
 * load the native compute addon.
 */
export * from '@catechism/core/merge';
