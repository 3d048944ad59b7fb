# chatfleet image: one binary, every role. The role is the command:
#   podman run chatfleet gateway | worker | ctl queue
# Built without default features, so it carries no bench code (docs/operations.md#container-image).
#
# Stage 1 compiles. Dependencies are built in their own layer from Cargo.toml and Cargo.lock
# alone, so editing src/ rebuilds only the crate itself.
FROM docker.io/library/rust:1-slim-bookworm AS build
WORKDIR /src
# No debug info and no symbols in the image's binary (the release profile keeps line tables for
# profiling on developer machines).
ENV CARGO_PROFILE_RELEASE_DEBUG=0 \
    CARGO_PROFILE_RELEASE_STRIP=symbols \
    CARGO_TERM_COLOR=never
# jemalloc, the binary's allocator, is built from C with make (the slim image has only gcc).
RUN apt-get update && apt-get install -y --no-install-recommends make && rm -rf /var/lib/apt/lists/*
COPY Cargo.toml Cargo.lock ./
# Placeholder targets so cargo can resolve and build the dependency graph.
RUN mkdir -p src bin tests/api \
    && echo '' > src/lib.rs \
    && echo 'fn main() {}' > bin/chatfleet.rs \
    && echo '' > tests/api/main.rs \
    && cargo build --release --locked --no-default-features \
    && rm -rf src bin tests target/release/.fingerprint/chatfleet-* target/release/deps/chatfleet-* \
       target/release/deps/libchatfleet-*
COPY config config
COPY lua lua
COPY src src
COPY bin/chatfleet.rs bin/chatfleet.rs
RUN mkdir -p tests/api && echo '' > tests/api/main.rs \
    && cargo build --release --locked --no-default-features --bin chatfleet \
    && cp target/release/chatfleet /chatfleet

# Stage 2 runs: Debian slim, CA certificates for HTTPS upstreams, a non-root user.
FROM docker.io/library/debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin chatfleet
COPY --from=build /chatfleet /usr/local/bin/chatfleet
# config/ is baked in: default.toml is also compiled into the binary; the other files (dev.toml,
# production examples) are there to be named with --config or replaced by a mounted file.
COPY config /etc/chatfleet
WORKDIR /home/chatfleet
USER 10001:10001
# 8080: clients (WebSocket, SSE, REST, chat page); 9090: /metrics.
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/chatfleet"]
CMD ["gateway"]
