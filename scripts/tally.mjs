// Sums test results of every suite run by scripts/test.sh and prints the
// closing line `N passed, M failed`; exits 1 when anything failed.
// Input: a directory of `<name>.rc` files (a suite's exit code), each with an
// optional report beside it: `<name>.vitest.json` (vitest JSON reporter) or
// `<name>.cargo.log` (`cargo test` output). A suite that exits non-zero
// without reporting a failure counts as one failure; a plain step (no report)
// counts only when it fails.
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

function vitestCounts(file) {
  const r = JSON.parse(readFileSync(file, 'utf8'));
  return { passed: r.numPassedTests ?? 0, failed: r.numFailedTests ?? 0 };
}

function cargoCounts(file) {
  let passed = 0;
  let failed = 0;
  const line = /^test result: \w+\. (\d+) passed; (\d+) failed;/gm;
  for (const m of readFileSync(file, 'utf8').matchAll(line)) {
    passed += Number(m[1]);
    failed += Number(m[2]);
  }
  return { passed, failed };
}

const dir = process.argv[2];
if (!dir) throw new Error('usage: node scripts/tally.mjs <results-dir>');
let passed = 0;
let failed = 0;
for (const rcFile of readdirSync(dir)
  .filter((f) => f.endsWith('.rc'))
  .sort()) {
  const name = rcFile.slice(0, -'.rc'.length);
  const rc = Number(readFileSync(join(dir, rcFile), 'utf8').trim() || 1);
  const vitest = join(dir, `${name}.vitest.json`);
  const cargo = join(dir, `${name}.cargo.log`);
  let c = { passed: 0, failed: 0 };
  try {
    if (existsSync(vitest)) c = vitestCounts(vitest);
    else if (existsSync(cargo)) c = cargoCounts(cargo);
  } catch (e) {
    console.log(`${name}: unreadable report (${e.message})`);
  }
  if (rc !== 0 && c.failed === 0) c.failed = 1;
  console.log(`${name}: ${c.passed} passed, ${c.failed} failed (exit ${rc})`);
  passed += c.passed;
  failed += c.failed;
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed > 0 ? 1 : 0);
