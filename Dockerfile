# syntax=docker/dockerfile:1
# The kv-epp image: builds the Rust addon and the TypeScript, ships a slim Node 24 runtime.
# Drop-in for the GAIE EPP: ext_proc on 9002, gRPC health on 9003, metrics on 9090, same flags.
# `docker run IMAGE` serves the embedded default (loopback endpoints; for trying it out);
# in a cluster pass `serve --endpoints-file … [--nats-server …]` as the container args.
FROM rust:1.95-bookworm AS rust

FROM node:24-bookworm AS builder
COPY --from=rust /usr/local/cargo /usr/local/cargo
COPY --from=rust /usr/local/rustup /usr/local/rustup
ENV CARGO_HOME=/usr/local/cargo RUSTUP_HOME=/usr/local/rustup PATH=/usr/local/cargo/bin:$PATH
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY . .
RUN npm run build && npm prune --omit=dev

FROM node:24-bookworm-slim
# The `commit` label of inference_extension_info (docker build --build-arg KV_EPP_COMMIT=$(git rev-parse HEAD)).
ARG KV_EPP_COMMIT=unknown
ENV NODE_ENV=production KV_EPP_COMMIT=$KV_EPP_COMMIT
WORKDIR /app
COPY --from=builder /src/package.json ./
COPY --from=builder /src/node_modules ./node_modules
COPY --from=builder /src/dist ./dist
COPY --from=builder /src/proto ./proto
COPY --from=builder /src/native/napi/package.json /src/native/napi/index.js /src/native/napi/index.d.ts ./native/napi/
COPY --from=builder /src/native/napi/*.node ./native/napi/
COPY --from=builder /src/config ./config
USER node
EXPOSE 9002 9003 9090
# V8 flags: see README "Latency and GC" and src/cli/gc-flags.ts (LAUNCHER_V8_FLAGS; a test holds this line to it).
# --disable-sigusr1: SIGUSR1 would open an unauthenticated inspector (code execution) to the pod.
ENTRYPOINT ["node", "--disable-sigusr1", "--max-semi-space-size=4", "--initial-old-space-size=256", "--single-threaded-gc", "dist/src/cli/main.js"]
CMD ["serve", "--endpoints-file", "config/endpoints.default.yaml", "--secure-serving=false"]
