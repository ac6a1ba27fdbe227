/** Where an ext_proc stream sends its answers; grpc-server.ts binds it to a gRPC call. */
import type { ProcessingResponse } from './messages.js';

/** gRPC status codes the stream ends with on protocol errors. */
export const GrpcCode = {
  INVALID_ARGUMENT: 3,
  RESOURCE_EXHAUSTED: 8,
  UNIMPLEMENTED: 12,
  INTERNAL: 13,
} as const;

export interface StreamSink {
  send(msg: ProcessingResponse): void;
  /** Ends the stream with status OK. */
  end(): void;
  /** Ends the stream with a gRPC error status. */
  fail(code: number, message: string): void;
}
