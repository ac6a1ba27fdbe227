/**
 * Plain-object shapes of the ext_proc messages as @grpc/proto-loader hands
 * them over (options in proto.ts: `keepCase`, `oneofs`, no defaults, enums as
 * numbers, bytes as Buffer). Field names follow the .proto files in proto/.
 *
 * One trap: the google.protobuf well-known types come from protobufjs's
 * built-in definitions, whose field names are camelCase even with `keepCase`
 * (`stringValue`, `listValue`, `structValue`). Everything else is snake_case.
 */

// --- google.protobuf.Struct / Value (camelCase, see above) ---

export interface ProtoStruct {
  fields?: Record<string, ProtoValue> | null | undefined;
}

export interface ProtoValue {
  nullValue?: number | null | undefined;
  numberValue?: number | null | undefined;
  stringValue?: string | null | undefined;
  boolValue?: boolean | null | undefined;
  structValue?: ProtoStruct | null | undefined;
  listValue?: { values?: ProtoValue[] | null | undefined } | null | undefined;
  /** Which member of the `kind` oneof is set (decoded messages only). */
  kind?: string | undefined;
}

// --- envoy.config.core.v3 ---

export interface Metadata {
  filter_metadata?: Record<string, ProtoStruct> | null | undefined;
}

export interface HeaderValue {
  key?: string | null | undefined;
  value?: string | null | undefined;
  raw_value?: Uint8Array | null | undefined;
}

export interface HeaderMap {
  headers?: HeaderValue[] | null | undefined;
}

/** `HeaderValueOption.HeaderAppendAction`. */
export const AppendAction = {
  APPEND_IF_EXISTS_OR_ADD: 0,
  ADD_IF_ABSENT: 1,
  OVERWRITE_IF_EXISTS_OR_ADD: 2,
  OVERWRITE_IF_EXISTS: 3,
} as const;

export interface HeaderValueOption {
  header: { key: string; raw_value: Uint8Array };
  append_action?: number;
}

// --- envoy.extensions.filters.http.ext_proc.v3.ProcessingMode ---

/** `ProcessingMode.BodySendMode`. */
export const BodySendMode = {
  NONE: 0,
  STREAMED: 1,
  BUFFERED: 2,
  BUFFERED_PARTIAL: 3,
  FULL_DUPLEX_STREAMED: 4,
  GRPC: 5,
} as const;

/** `ProcessingMode.HeaderSendMode`. */
export const HeaderSendMode = { DEFAULT: 0, SEND: 1, SKIP: 2 } as const;

/**
 * `envoy.extensions.filters.http.ext_proc.v3.ProcessingMode` (fields 1–6), as
 * sent in `mode_override`: Envoy applies it for the rest of this request only
 * when the filter has `allow_mode_override`, and only in answer to headers.
 */
export interface ProcessingMode {
  request_header_mode?: number;
  response_header_mode?: number;
  request_body_mode?: number;
  response_body_mode?: number;
  request_trailer_mode?: number;
  response_trailer_mode?: number;
}

// --- envoy.service.ext_proc.v3: data plane → EPP ---

export interface HttpHeaders {
  headers?: HeaderMap | null | undefined;
  end_of_stream?: boolean | null | undefined;
}

export interface HttpBody {
  body?: Uint8Array | null | undefined;
  end_of_stream?: boolean | null | undefined;
}

export interface HttpTrailers {
  trailers?: HeaderMap | null | undefined;
}

export interface ProtocolConfiguration {
  request_body_mode?: number | null | undefined;
  response_body_mode?: number | null | undefined;
  send_body_without_waiting_for_header_response?: boolean | null | undefined;
}

export type RequestKind =
  | 'request_headers'
  | 'response_headers'
  | 'request_body'
  | 'response_body'
  | 'request_trailers'
  | 'response_trailers';

export interface ProcessingRequest {
  /** The member of the `request` oneof that is set. */
  request?: RequestKind | undefined;
  request_headers?: HttpHeaders | null | undefined;
  response_headers?: HttpHeaders | null | undefined;
  request_body?: HttpBody | null | undefined;
  response_body?: HttpBody | null | undefined;
  request_trailers?: HttpTrailers | null | undefined;
  response_trailers?: HttpTrailers | null | undefined;
  metadata_context?: Metadata | null | undefined;
  observability_mode?: boolean | null | undefined;
  protocol_config?: ProtocolConfiguration | null | undefined;
}

// --- envoy.service.ext_proc.v3: EPP → data plane ---

export interface HeaderMutation {
  set_headers?: HeaderValueOption[];
  remove_headers?: string[];
}

export interface StreamedBodyResponse {
  body: Uint8Array;
  end_of_stream: boolean;
}

export interface BodyMutation {
  body?: Uint8Array;
  clear_body?: boolean;
  streamed_response?: StreamedBodyResponse;
}

/** `CommonResponse.ResponseStatus`: only CONTINUE (0, the default) is used. */
export interface CommonResponse {
  status?: number;
  header_mutation?: HeaderMutation;
  body_mutation?: BodyMutation;
  clear_route_cache?: boolean;
}

export interface HeadersResponse {
  response?: CommonResponse;
}

export interface BodyResponse {
  response?: CommonResponse;
}

export interface TrailersResponse {
  header_mutation?: HeaderMutation;
}

export interface ImmediateResponse {
  /** `envoy.type.v3.HttpStatus`: `code` is the numeric HTTP status. */
  status: { code: number };
  headers?: HeaderMutation;
  body?: Uint8Array;
  details?: string;
}

export interface ProcessingResponse {
  request_headers?: HeadersResponse;
  response_headers?: HeadersResponse;
  request_body?: BodyResponse;
  response_body?: BodyResponse;
  request_trailers?: TrailersResponse;
  response_trailers?: TrailersResponse;
  immediate_response?: ImmediateResponse;
  dynamic_metadata?: ProtoStruct;
  mode_override?: ProcessingMode;
}

// --- Protocol constants (Endpoint Picker Protocol, gaie-epp.md §1.1) ---

/** Request header and `envoy.lb` metadata key carrying the picked endpoint(s). */
export const DESTINATION_ENDPOINT_KEY = 'x-gateway-destination-endpoint';
/** Namespace of the destination metadata (EPP → data plane) and the served endpoint (back). */
export const DESTINATION_ENDPOINT_NAMESPACE = 'envoy.lb';
/** Response-phase metadata key: the endpoint the data plane actually used. */
export const DESTINATION_ENDPOINT_SERVED_KEY = 'x-gateway-destination-endpoint-served';
/** Request-phase metadata namespace of the subset hint. */
export const SUBSET_HINT_NAMESPACE = 'envoy.lb.subset_hint';
/** Request-phase metadata key of the subset hint (list or comma string). */
export const SUBSET_HINT_KEY = 'x-gateway-destination-endpoint-subset';
export const REQUEST_ID_HEADER = 'x-request-id';
