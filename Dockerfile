# syntax=docker/dockerfile:1
#
# longpoll-gateway container image.
#   docker build -t longpoll-gateway:dev .
#   docker run --rm -p 8080:8080 -p 9090:9090 longpoll-gateway:dev
# The runtime stage is debian:12-slim (not distroless) so that `sleep` exists for the chart's
# preStop hook. The process runs as uid/gid 10001, which the chart's securityContext expects.

# ---- build ------------------------------------------------------------------------------
FROM rust:1-bookworm AS builder
WORKDIR /src
COPY . .
# The registry and target caches survive between builds (BuildKit); the binary is copied out
# of the cache mount so that the next stage can see it.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin longpoll-gateway \
    && install -D -m 0755 target/release/longpoll-gateway /out/longpoll-gateway

# ---- runtime ----------------------------------------------------------------------------
FROM debian:12-slim
# ca-certificates: amqps:// brokers and https OTLP endpoints.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 longpoll \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin longpoll
COPY --from=builder /out/longpoll-gateway /usr/local/bin/longpoll-gateway
USER 10001:10001
# Public listener (long-polls, JS client, demo, management API) and admin listener
# (/healthz, /readyz, /metrics).
EXPOSE 8080 9090
ENV LONGPOLL_LISTEN=0.0.0.0:8080 \
    LONGPOLL_ADMIN_LISTEN=0.0.0.0:9090
# SIGTERM starts the drain (see docs/kubernetes.md); the binary is PID 1 and handles it.
STOPSIGNAL SIGTERM
ENTRYPOINT ["longpoll-gateway"]
CMD ["serve"]
