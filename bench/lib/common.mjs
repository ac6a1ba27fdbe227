/**
 * Helpers shared by the benchmark harnesses (bench/envoy-load, bench/events):
 * numeric flag parsing, `--help` from the file's header comment, Markdown
 * tables, and CPU accounting from /proc (Linux).
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

/** Clock ticks per second of /proc CPU times. */
export const TICK = (() => {
  try {
    return Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
  } catch {
    return 100;
  }
})();

/** A non-negative number flag, or an error naming it. */
export function num(name, v) {
  const n = Number(v);
  if (!Number.isFinite(n) || n < 0) throw new Error(`--${name}: expected a number, got ${v}`);
  return n;
}

/** Prints the header comment of the script at `url` (its usage) and exits. */
export function printHelpAndExit(url) {
  const doc = readFileSync(fileURLToPath(url), 'utf8').split('*/')[0] ?? '';
  console.log(doc.replace(/^#!.*\n\/\*\*\n/, '').replace(/^ \* ?/gm, ''));
  process.exit(0);
}

/** A Markdown table: first column left-aligned, the rest right-aligned. */
export function table(headers, rows) {
  const cells = [headers, ...rows].map((r) => r.map((c) => (c === undefined ? '' : String(c))));
  const w = headers.map((_, i) => Math.max(...cells.map((r) => r[i].length)));
  const line = (r) =>
    `| ${r.map((c, i) => (i === 0 ? c.padEnd(w[i]) : c.padStart(w[i]))).join(' | ')} |`;
  const out = [line(cells[0]), `| ${w.map((n) => '-'.repeat(n)).join(' | ')} |`];
  for (const r of cells.slice(1)) out.push(line(r));
  return out.join('\n');
}

/** CPU seconds of a /proc/<pid>[/task/<tid>]/stat file (itself, reaped children); undefined when gone. */
export function statCpu(path) {
  try {
    const s = readFileSync(path, 'utf8');
    const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
    // fields after the comm: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14)
    return {
      self: (Number(f[11]) + Number(f[12])) / TICK,
      children: (Number(f[13]) + Number(f[14])) / TICK,
    };
  } catch {
    return undefined;
  }
}

/** Machine-wide CPU seconds: busy, irq + softirq (loopback TCP, charged to no process), total. */
export function machineCpu() {
  const first = readFileSync('/proc/stat', 'utf8').split('\n')[0] ?? '';
  const v = first.trim().split(/\s+/).slice(1).map(Number);
  const total = v.slice(0, 8).reduce((a, b) => a + b, 0);
  const idle = (v[3] ?? 0) + (v[4] ?? 0);
  const irq = (v[5] ?? 0) + (v[6] ?? 0);
  return { busy: (total - idle) / TICK, irq: irq / TICK, total: total / TICK };
}
