/** Reads a static endpoints file (JSON or YAML) into validated endpoints. Adapter. */
import { readFile } from 'node:fs/promises';
import { parse as parseYaml } from 'yaml';
import { KvEppError } from '../errors.js';
import { type Endpoint, parseEndpoints } from './endpoints.js';

export async function loadEndpointsFile(path: string): Promise<Endpoint[]> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
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
