export interface GcPause {
  startMs: number;
  durationMs: number;
  kind: number;
}
export interface TimedRequest {
  startMs: number;
  latencyMs: number;
}
export interface GcOverlap {
  pauses: Record<string, { count: number; totalMs: number; maxMs: number; p50Ms: number }>;
  requestsOverlappingPct: number;
  slowest1PctOverlappingPct: number;
  p99Ms: number;
  p99WithoutOverlapMs: number | undefined;
}
export function quantile(sorted: readonly number[], q: number): number | undefined;
export function parseGcLog(text: string): GcPause[];
export function parseVegetaCsv(text: string): TimedRequest[];
export function gcOverlap(
  requests: readonly TimedRequest[],
  pauses: readonly GcPause[],
): GcOverlap | undefined;
