# Two stages: a full Rust toolchain builds the binary, a distroless image runs it.
# Both stages are Debian 12 (bookworm), so the glibc the binary is linked against at build time
# is the one it finds at run time. Both base images are multi-arch (amd64, arm64).

FROM rust:1-bookworm AS builder
WORKDIR /src

# Dependencies first, against a placeholder crate: this layer is rebuilt only when Cargo.toml or
# Cargo.lock change, not on every source edit.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && cargo build --release --locked \
 && rm -rf src \
    target/release/.fingerprint/solar-charging-backend-* \
    target/release/deps/solar_charging_backend-* \
    target/release/deps/libsolar_charging_backend-* \
    target/release/solar-charging-backend

# The real sources. The placeholder's fingerprints were removed above, so cargo rebuilds this
# crate whatever the copied files' timestamps are.
COPY . .
RUN cargo build --release --locked \
 && mkdir -p /out/data \
 && cp target/release/solar-charging-backend /out/solar-charging-backend


# Runs as the image's "nonroot" user (uid/gid 65532); there is no shell and no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot

LABEL org.opencontainers.image.title="solar-charging-backend" \
      org.opencontainers.image.description="Grid-charges a LuxPower/EG4 battery to a chosen SOC at a scheduled time through a Monitor My Solar dongle" \
      org.opencontainers.image.licenses="MIT"

COPY --from=builder /out/solar-charging-backend /usr/local/bin/solar-charging-backend
# Created owned by the runtime user so that a fresh named volume mounted here is writable.
# A bind mount keeps the host directory's owner instead: it must be writable by uid 65532.
COPY --from=builder --chown=65532:65532 /out/data /app/data

WORKDIR /app
USER 65532:65532

# Inside a container the listener must be on all interfaces to be reachable through a published
# port; which host interfaces are exposed is decided by `ports:` / `-p`, not here. This overrides
# `server.host` from a config.yaml written for running outside a container.
ENV SERVER_HOST=0.0.0.0
# Schedules follow `timezone:` in config.yaml, else TZ (e.g. TZ=Europe/London). Zone names resolve
# from /usr/share/zoneinfo, which the distroless base ships; were it missing, the binary would use
# the copy of the tz database compiled into it, so any IANA name works either way. UTC unless
# overridden.
ENV TZ=UTC

VOLUME /app/data
EXPOSE 8088

# No curl in a distroless image: the binary checks itself. It asks 127.0.0.1:8088, so a container
# run with another SERVER_PORT needs its own healthcheck (docker-compose.yml passes --url).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/solar-charging-backend", "healthcheck"]

# The binary handles SIGTERM itself (it is PID 1 here): idle, it exits at once; with a dongle
# write in flight it first waits for its answer, at most one write timeout (15 s by default),
# so give the container `docker stop -t 30` (docker-compose.yml sets stop_grace_period).
# The config and data paths come from the environment, not from flags: `demo` (e.g.
# `docker run --rm -p 8088:8088 IMAGE demo --host 0.0.0.0`) ignores SBC_DATA_DIR and keeps its
# simulated schedules and history out of the volume the real service reads.
ENV SBC_CONFIG=/app/config.yaml SBC_DATA_DIR=/app/data
ENTRYPOINT ["/usr/local/bin/solar-charging-backend"]
CMD ["serve"]
