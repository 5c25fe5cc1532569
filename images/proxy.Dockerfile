# syntax=docker/dockerfile:1
# The sidecar's image for a container engine (docker/podman build -f images/proxy.Dockerfile .).
# CI builds the same image daemonless with images/build.sh (buildah, FROM scratch).
# As small as it can be: the release profile (fat LTO, one codegen unit), stripped,
# statically linked; nothing else but the CA bundle (for the control plane's TLS); non-root.
FROM rust:1.94-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    target="$(uname -m)-unknown-linux-gnu" && \
    RUSTFLAGS="-C target-feature=+crt-static" \
      cargo build --locked --release --config profile.release.strip=true --target "$target" \
        -p portcullis-proxy --bin portcullis-proxy && \
    cp "target/$target/release/portcullis-proxy" /portcullis-proxy

FROM scratch
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /portcullis-proxy /portcullis-proxy
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["/portcullis-proxy"]
