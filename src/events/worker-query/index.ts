/**
 * Client of a Dynamo 1.6.1 worker's local KV indexer (the recovery endpoint
 * Dynamo's router queries on an event-id gap and when it first binds a
 * worker's event source). See docs/dynamo-request-plane.md.
 */
export {
  type QueryOptions,
  type QueryTarget,
  queryWorkerKv,
  queryWorkerKvDump,
  queryWorkerKvRange,
} from './client.js';
export {
  type EndpointId,
  findRecoveryTarget,
  type ListOptions,
  listRecoveryTargets,
  parseJsonExact,
  parseTcpAddress,
  type RecoveryTarget,
} from './discovery.js';
export { WorkerQueryError, type WorkerQueryErrorCode } from './errors.js';
export type { WorkerKvQueryResult } from './wire.js';
