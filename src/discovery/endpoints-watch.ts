/**
 * Static discovery that follows its file: `--endpoints-file` is re-read when
 * it changes (directory watch, plus a poll because watch events are lost on
 * some filesystems and a ConfigMap update swaps a symlink). Adapter module.
 *
 * Contract: a file that no longer parses or validates is logged and ignored —
 * the last good list stays in force, nothing is removed from the index.
 * `onChange` is called only when the parsed list differs. A file is read only
 * once it has not changed for `settleMs`: one written in pieces (an editor, a
 * script appending) can parse as a shorter valid list half-way, and installing
 * that would drop the missing workers' KV state until they refill it.
 */
import { type FSWatcher, watch } from 'node:fs';
import { stat } from 'node:fs/promises';
import { basename, dirname } from 'node:path';
import type { Logger } from '../log/logger.js';
import type { Endpoint } from './endpoints.js';
import { loadEndpointsFile } from './endpoints-file.js';

export interface EndpointsWatchOptions {
  log: Logger;
  /** Re-read interval in ms; 0 disables polling (the watch still runs). Default 5 s. */
  pollMs?: number | undefined;
  /** How long a file must stay unmodified before it is read (ms). Default 250. */
  settleMs?: number | undefined;
  onChange: (endpoints: Endpoint[]) => void;
}

export interface EndpointsWatch {
  /** Re-reads now; resolves true when a new list was installed. */
  reload(): Promise<boolean>;
  close(): void;
}

function fingerprint(list: readonly Endpoint[]): string {
  return JSON.stringify(list, (_k, v) => (typeof v === 'bigint' ? v.toString() : v));
}

export function watchEndpointsFile(
  path: string,
  initial: readonly Endpoint[],
  opts: EndpointsWatchOptions,
): EndpointsWatch {
  let current = fingerprint(initial);
  let reading: Promise<boolean> | undefined;
  let again = false;
  /** Identity of the file last parsed: the poll parses only when it changed. */
  let seen: string | undefined;
  /** The last unusable-file warning given, until a good read. */
  let lastProblem: string | undefined;
  const settleMs = opts.settleMs ?? 250;
  let settleTimer: NodeJS.Timeout | undefined;
  /** Reloads once nothing has touched the file for `delayMs`. */
  const reloadLater = (delayMs: number): void => {
    if (settleTimer) clearTimeout(settleTimer);
    settleTimer = setTimeout(() => {
      settleTimer = undefined;
      void reload();
    }, delayMs);
    settleTimer.unref();
  };
  /** 'same' (parsed already), 'settling' (modified too recently: retried later) or 'read'. */
  const changed = async (force: boolean): Promise<'same' | 'settling' | 'read'> => {
    try {
      const st = await stat(path);
      const id = `${st.dev}:${st.ino}:${st.size}:${st.mtimeMs}:${st.ctimeMs}`;
      if (id === seen && !force) return 'same';
      const age = Date.now() - Math.max(st.mtimeMs, st.ctimeMs);
      if (!force && age >= 0 && age < settleMs) {
        reloadLater(settleMs - age + 1);
        return 'settling';
      }
      seen = id;
    } catch {
      seen = undefined; // gone: let the read report it
    }
    return 'read';
  };
  const readOnce = async (force: boolean): Promise<boolean> => {
    // A poll that finds the same file does nothing (parsing YAML costs the event loop ms).
    if ((await changed(force)) !== 'read') return false;
    let next: Endpoint[];
    try {
      next = await loadEndpointsFile(path);
    } catch (e) {
      // Once per distinct problem: a file gone for hours is not a warning every poll.
      const err = (e as Error).message;
      if (err !== lastProblem) {
        lastProblem = err;
        opts.log.warn(
          { file: path, err },
          'endpoints file not usable; keeping the previous endpoints',
        );
      }
      return false;
    }
    lastProblem = undefined;
    const fp = fingerprint(next);
    if (fp === current) return false;
    current = fp;
    opts.onChange(next);
    return true;
  };
  const reload = (force = false): Promise<boolean> => {
    if (reading) {
      again = true;
      return reading;
    }
    reading = readOnce(force).finally(() => {
      reading = undefined;
      if (again) {
        again = false;
        void reload();
      }
    });
    return reading;
  };
  let watcher: FSWatcher | undefined;
  const name = basename(path);
  try {
    watcher = watch(dirname(path), { persistent: false }, (_event, file) => {
      // Any change in the directory may be a symlink swap of our file.
      if (file === null || file === name || file.startsWith('..')) reloadLater(settleMs);
    });
    watcher.on('error', () => {});
  } catch {
    // Polling only.
  }
  const pollMs = opts.pollMs ?? 5000;
  const timer = pollMs > 0 ? setInterval(() => void reload(), pollMs) : undefined;
  timer?.unref();
  return {
    reload: () => reload(true),
    close() {
      watcher?.close();
      if (timer) clearInterval(timer);
      if (settleTimer) clearTimeout(settleTimer);
    },
  };
}
