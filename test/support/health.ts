/** A grpc.health.v1 client for tests: Check, List and Watch over plaintext h2c. */
import {
  type Client,
  type ClientReadableStream,
  credentials,
  makeClientConstructor,
  type ServiceError,
} from '@grpc/grpc-js';
import { loadServices } from '../../src/server/ext-proc/proto.js';

export type HealthClient = Client & {
  Check(
    req: { service: string },
    cb: (err: ServiceError | null, res?: { status?: number }) => void,
  ): void;
  List(
    req: object,
    cb: (
      err: ServiceError | null,
      res?: { statuses?: Record<string, { status?: number }> },
    ) => void,
  ): void;
  Watch(req: { service: string }): ClientReadableStream<{ status?: number }>;
};

export const SERVING = 1;
export const NOT_SERVING = 2;
export const SERVICE_UNKNOWN = 3;

export function healthClient(port: number): HealthClient {
  const Ctor = makeClientConstructor(loadServices().health, 'Health');
  return new Ctor(`127.0.0.1:${port}`, credentials.createInsecure()) as unknown as HealthClient;
}

/** The status for `service`, or the call's error. */
export function check(c: HealthClient, service: string): Promise<number | ServiceError> {
  return new Promise((resolve) => {
    c.Check({ service }, (err, res) => resolve(err ?? res?.status ?? 0));
  });
}
