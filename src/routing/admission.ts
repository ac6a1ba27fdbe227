/**
 * Load shedding: when kv-epp answers 429 (`overloaded`, with `retry-after`)
 * instead of routing. Two independent limits, both off when 0:
 *
 * - `maxPendingPrepare`: requests already waiting for tokenization. Past it a
 *   new request is shed before any work is spent on it, so a burst of huge
 *   prompts cannot grow the queue (and memory) without bound.
 * - `maxInFlightPerEndpoint`: an endpoint with that many requests in flight
 *   is busy and not picked (Dynamo's busy-worker exclusion, with kv-epp's own
 *   in-flight count as the load signal). When every candidate is busy the
 *   request is shed.
 *
 * The subset hint is applied first: an empty subset is a 503 (no endpoint),
 * never a 429. Pure.
 */
import type { Endpoint } from '../discovery/endpoints.js';
import { KvEppError } from '../errors.js';

export interface AdmissionSettings {
  /** Requests waiting for tokenization at which new ones are shed; 0 = no limit. */
  maxPendingPrepare: number;
  /** Requests in flight at which an endpoint counts as busy; 0 = never busy. */
  maxInFlightPerEndpoint: number;
}

export const NO_SHEDDING: AdmissionSettings = { maxPendingPrepare: 0, maxInFlightPerEndpoint: 0 };

/** Throws `overloaded` when the tokenization queue is full. */
export function admitToPrepare(pending: number, settings: AdmissionSettings): void {
  const max = settings.maxPendingPrepare;
  if (max > 0 && pending >= max) {
    throw new KvEppError(
      'overloaded',
      `${pending} requests are waiting for tokenization (limit ${max}); retry later`,
    );
  }
}

/**
 * The candidates that are not busy; throws `overloaded` when all are.
 * `candidates` must be non-empty (the caller answers 503 for none).
 */
export function notBusy(
  candidates: readonly Endpoint[],
  inFlight: (e: Endpoint) => number,
  settings: AdmissionSettings,
): Endpoint[] {
  const max = settings.maxInFlightPerEndpoint;
  if (max <= 0) return [...candidates];
  const free = candidates.filter((e) => inFlight(e) < max);
  if (free.length === 0) {
    throw new KvEppError(
      'overloaded',
      `all ${candidates.length} candidate endpoints are busy (${max} requests in flight each); retry later`,
    );
  }
  return free;
}
