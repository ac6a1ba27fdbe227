export type Snapshot = { [key: string]: number | Snapshot | undefined | null };

export function sliceOrder<T>(order: readonly T[], k: number): T[];
export function addDelta(acc: Snapshot, before: Snapshot | undefined, after: Snapshot): Snapshot;
export function zeroLike<T>(x: T): T;
export function pooledThroughput(
  reps: readonly { requests: number; success: number; duration: number; wait: number }[],
): number;
