/**
 * Diagnostic preload for kv-epp (`--node-args="--import=<this file>"`): samples
 * every JS heap allocation, including objects young-generation GC already
 * freed (what drives scavenge frequency; KV_EPP_HEAP_SAMPLE_MINOR=0 keeps only
 * objects that outlived a scavenge, what drives mark-compacts), and writes a `.heapprofile` into
 * KV_EPP_HEAP_SAMPLE_DIR when the process exits (SIGTERM from the bench).
 * Open it in Chrome DevTools or sum it by function.
 */
import { writeFileSync } from 'node:fs';
import { Session } from 'node:inspector';
import { join } from 'node:path';

const dir = process.env.KV_EPP_HEAP_SAMPLE_DIR ?? '.';
const session = new Session();
session.connect();
session.post('HeapProfiler.startSampling', {
  samplingInterval: 8192,
  includeObjectsCollectedByMajorGC: true,
  includeObjectsCollectedByMinorGC: process.env.KV_EPP_HEAP_SAMPLE_MINOR !== '0',
});
let written = false;
const write = () => {
  if (written) return;
  written = true;
  session.post('HeapProfiler.stopSampling', (err, res) => {
    if (!err)
      writeFileSync(join(dir, `kv-epp-${process.pid}.heapprofile`), JSON.stringify(res.profile));
    process.exit(0);
  });
};
process.once('SIGTERM', write);
process.once('SIGINT', write);
