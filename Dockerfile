# syntax=docker/dockerfile:1
#
# shardprep image: one static-ish `shardprep` binary on a distroless base.
#
#   docker build -t REGISTRY/shardprep:TAG .
#   docker run --rm REGISTRY/shardprep:TAG --help
#
# The same image runs every role: `coordinator`, `worker`, `status`, `verify`,
# `generate` (the first argument picks it). See docs/kubernetes.md.

# The builder is Debian 12 (bookworm) on purpose: the binary links glibc
# dynamically and must not need a newer glibc than the runtime image
# (distroless cc-debian12) has.
ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
# protoc comes from the vendored crate (crates/core/build.rs), so no apt step.
# The cache mounts keep the registry and target/ between builds; the binary is
# copied out of the cached target/ within the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin shardprep \
 && install -D -m 0755 target/release/shardprep /out/shardprep

# distroless/cc: glibc, libgcc_s, CA certificates, /etc/passwd with `nonroot`
# (65532); no shell, no package manager.
FROM ${RUNTIME_IMAGE}
COPY --from=build /out/shardprep /shardprep
USER 65532:65532
# gRPC (coordinator): Service/port 50051 in k8s/.
EXPOSE 50051
ENTRYPOINT ["/shardprep"]
CMD ["--help"]
