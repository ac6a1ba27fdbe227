/**
 * The compiled file of a worker entry module. Workers always run compiled
 * JavaScript: from dist/ the module's sibling is used; from src/ (the tests)
 * the build's copy in dist/src/workers/. Fails with `internal` when neither
 * exists (the TypeScript is not built).
 */
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { KvEppError } from '../errors.js';

/** `name`: the entry's file name under src/workers/, `.js` (e.g. `prepare-worker.js`). */
export function workerEntryFile(name: string): string {
  const sibling = new URL(`./${name}`, import.meta.url);
  if (existsSync(fileURLToPath(sibling))) return fileURLToPath(sibling);
  const built = new URL(`../../dist/src/workers/${name}`, import.meta.url);
  if (existsSync(fileURLToPath(built))) return fileURLToPath(built);
  throw new KvEppError('internal', `worker entry ${name} not built: run \`npm run build:ts\``);
}
