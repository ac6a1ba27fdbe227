/**
 * Reads a static endpoints file (JSON or YAML) into validated endpoints. Adapter.
 * Failure modes: only a regular file of at most MAX_ENDPOINTS_FILE_BYTES is
 * read. It is opened non-blocking, so a FIFO or device put in its place is
 * refused at once instead of blocking the read (and every later reload, and
 * the process's exit) until something writes to it.
 */
import { constants } from 'node:fs';
import { open } from 'node:fs/promises';
import { parse as parseYaml } from 'yaml';
import { KvEppError } from '../errors.js';
import { type Endpoint, parseEndpoints } from './endpoints.js';

/** The largest endpoints file read (100 000 endpoints take ~10 MB). */
export const MAX_ENDPOINTS_FILE_BYTES = 64 * 1024 * 1024;

export async function loadEndpointsFile(path: string): Promise<Endpoint[]> {
  let text: string;
  try {
    const fh = await open(path, constants.O_RDONLY | constants.O_NONBLOCK);
    try {
      const st = await fh.stat();
      if (!st.isFile()) throw new Error('not a regular file');
      if (st.size > MAX_ENDPOINTS_FILE_BYTES) {
        throw new Error(`${st.size} bytes, more than the ${MAX_ENDPOINTS_FILE_BYTES} read`);
      }
      text = await fh.readFile('utf8');
    } finally {
      await fh.close();
    }
  } catch (e) {
    throw new KvEppError('invalid_argument', `${path}: cannot read: ${(e as Error).message}`);
  }
  let doc: unknown;
  try {
    // YAML is a superset of JSON. Ids above 2^53 must be quoted (checked by parseEndpoints).
    doc = parseYaml(text);
  } catch (e) {
    throw new KvEppError(
      'invalid_argument',
      `${path}: not valid YAML/JSON: ${(e as Error).message}`,
    );
  }
  return parseEndpoints(doc, path);
}
