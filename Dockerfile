# syntax=docker/dockerfile:1
# Placeholder: builds the addon + TypeScript, ships a slim Node 24 runtime.
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
ENV NODE_ENV=production
WORKDIR /app
COPY --from=builder /src/package.json ./
COPY --from=builder /src/node_modules ./node_modules
COPY --from=builder /src/dist ./dist
COPY --from=builder /src/proto ./proto
COPY --from=builder /src/native/napi ./native/napi
USER node
ENTRYPOINT ["node", "dist/src/cli/main.js"]
