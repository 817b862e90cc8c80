/** scripts/tap-quick-files.mjs: the quick test files' list check. */
export function checkQuickFiles(t: { test(name: string, fn: (t: any) => Promise<void>): unknown }, files: readonly string[], quickUrl: string): void;
