/**
 * Real text for tokenizer benchmarks, read from files `npm ci` installs (no
 * downloads): English prose from package READMEs, code from TypeScript's DOM
 * typings. Deterministic for a given lock file.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

const NM = join(import.meta.dirname, '../../node_modules');

function prose(): string {
  const parts: string[] = [];
  for (const dir of readdirSync(NM).sort()) {
    try {
      parts.push(readFileSync(join(NM, dir, 'README.md'), 'utf8'));
    } catch {
      // packages without a README
    }
  }
  return parts.join('\n\n');
}

function code(): string {
  return readFileSync(join(NM, 'typescript/lib/lib.dom.d.ts'), 'utf8');
}

/** `bytes` UTF-8 bytes (cut at a character boundary) of prose or code, repeated if short. */
export function sample(kind: 'prose' | 'code', bytes: number): string {
  let text = kind === 'prose' ? prose() : code();
  while (Buffer.byteLength(text) < bytes) text += `\n${text}`;
  const buf = Buffer.from(text).subarray(0, bytes);
  return buf.toString('utf8').replace(/\uFFFD+$/, '');
}
