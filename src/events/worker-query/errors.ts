/**
 * Typed failures of a worker local-indexer query. Callers branch on `code`,
 * never on `message` (the style of src/errors.ts). Every one of them means
 * "no authoritative answer": the caller keeps its index as it is, as Dynamo's
 * router does when a recovery attempt fails.
 */
export type WorkerQueryErrorCode =
  /** The whole call did not finish within its deadline. */
  | 'timeout'
  /** The worker's request-plane port refused the TCP connection (worker gone). */
  | 'connection_refused'
  /** Any other socket error, or a socket closed before the answer was complete. */
  | 'connection_failed'
  /** The worker answered the request-plane ACK with `Server unavailable: …` (no such endpoint instance). */
  | 'endpoint_missing'
  /** The worker answered the ACK with `Server overloaded: …`. */
  | 'overloaded'
  /** Any other non-empty ACK (`Read error: …`, `Invalid endpoint path`). */
  | 'rejected'
  /** The worker's response-stream prologue carried an error (its handler failed before answering). */
  | 'prologue_error'
  /** Bytes that do not follow the request-plane protocol (framing, handshake, msgpack shape). */
  | 'protocol'
  /** The local indexer answered `WorkerKvQueryResponse::Error(message)`. */
  | 'worker_error'
  /** File discovery has no KV event source with a recovery target for this worker / dp rank. */
  | 'no_recovery_target'
  /** The discovery directory or one of its records could not be read. */
  | 'discovery'
  /** Bad arguments (negative ids, a malformed address). */
  | 'invalid_argument';

export class WorkerQueryError extends Error {
  constructor(
    readonly code: WorkerQueryErrorCode,
    message: string,
  ) {
    super(message);
    this.name = 'WorkerQueryError';
  }
}
