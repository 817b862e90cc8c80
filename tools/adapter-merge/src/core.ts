/**
 * The registry and bundle library of @catechism/core, in one import for this
 * tool's modules. These sub-paths load no native code, so the registry
 * commands start without the compute addon.
 */
export * from '@catechism/core/registry';
export * from '@catechism/core/adapters';
