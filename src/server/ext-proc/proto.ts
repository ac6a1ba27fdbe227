/**
 * Loads the trimmed protos in proto/ (ext_proc v3 and grpc.health.v1) once per
 * process. The directory is found by walking up from this module, so the same
 * code works from src/ (vitest) and dist/src/ (the build); KV_EPP_PROTO_DIR
 * overrides it (e.g. an image that puts proto/ elsewhere).
 */
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ServiceDefinition } from '@grpc/grpc-js';
import { loadSync, type Options } from '@grpc/proto-loader';

const EXT_PROC_PROTO = 'envoy/service/ext_proc/v3/external_processor.proto';
const HEALTH_PROTO = 'grpc/health/v1/health.proto';

/** The decoded-object conventions messages.ts describes. */
const LOADER_OPTIONS: Options = {
  keepCase: true,
  longs: String,
  oneofs: true,
  defaults: false,
};

export interface ProtoServices {
  extProc: ServiceDefinition;
  health: ServiceDefinition;
}

let cached: ProtoServices | undefined;

export function protoDir(): string {
  const fromEnv = process.env.KV_EPP_PROTO_DIR;
  if (fromEnv) return fromEnv;
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 8; i++) {
    if (existsSync(join(dir, 'proto', EXT_PROC_PROTO))) return join(dir, 'proto');
    const up = dirname(dir);
    if (up === dir) break;
    dir = up;
  }
  throw new Error(`cannot find proto/${EXT_PROC_PROTO} above ${import.meta.url}`);
}

export function loadServices(): ProtoServices {
  if (cached) return cached;
  const pkg = loadSync([EXT_PROC_PROTO, HEALTH_PROTO], {
    ...LOADER_OPTIONS,
    includeDirs: [protoDir()],
  });
  cached = {
    extProc: pkg['envoy.service.ext_proc.v3.ExternalProcessor'] as ServiceDefinition,
    health: pkg['grpc.health.v1.Health'] as ServiceDefinition,
  };
  return cached;
}
