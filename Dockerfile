# syntax=docker/dockerfile:1
#
# The runner in one image: `runner serve`, `runner worker`, `runner scheduler`
# and `runner dev` are the same binary, chosen by the command.
#
#   docker build -t runner .
#   docker run --rm -p 8080:8080 runner dev --listen 0.0.0.0:8080
#
# deploy/compose.yaml runs the whole deployment (Redis, API, three worker
# pools, scheduler) from this image.

# ---------------------------------------------------------------- build
FROM rust:1.97-bookworm AS build

# The built-in tasks and examples are WebAssembly components: runtime/build.rs
# builds them for this target and embeds them in the binary.
RUN rustup target add wasm32-wasip2

WORKDIR /src
COPY . .

# The target dir is a cache mount, so the binary is copied out in the same
# step. --locked: the versions in Cargo.lock, nothing newer.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p runner-runtime --bin runner \
 && install -m 0755 target/release/runner /usr/local/bin/runner

# ---------------------------------------------------------------- runtime
FROM debian:bookworm-slim

# CA certificates for SMTP/HTTPS/rediss, a Japanese font for PDFs, curl for
# the health check.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl fonts-ipaexfont-gothic \
 && rm -rf /var/lib/apt/lists/*

# A system user without a shell; state (compiled-module cache, reports)
# under /var/lib/runner.
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/runner \
        --shell /usr/sbin/nologin runner \
 && mkdir -p /etc/runner /var/lib/runner/cache /var/lib/runner/reports /var/log/backoffice \
 && chown -R runner:runner /var/lib/runner /var/log/backoffice

COPY --from=build /usr/local/bin/runner /usr/local/bin/runner
COPY examples/runner.toml /etc/runner/runner.toml

USER runner
WORKDIR /var/lib/runner
ENV RUNNER_LISTEN=0.0.0.0:8080 \
    RUNNER_CACHE_DIR=/var/lib/runner/cache \
    RUST_LOG=info
EXPOSE 8080

# For `runner serve` (and `runner dev`); containers that serve no HTTP
# (workers, scheduler) turn it off (deploy/compose.yaml does).
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8080/healthz || exit 1

ENTRYPOINT ["runner"]
CMD ["serve", "--config", "/etc/runner/runner.toml"]
