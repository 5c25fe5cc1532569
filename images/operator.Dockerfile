# syntax=docker/dockerfile:1
# The operator's image for a container engine (docker/podman build -f images/operator.Dockerfile .).
# CI builds the same image daemonless with images/build.sh (buildah, FROM scratch).
# Nothing in the final image but the statically linked binary and the CA bundle; non-root.
FROM rust:1.94-bookworm AS build
WORKDIR /src
COPY . .
# glibc linked statically (no libc in the image); the ci-image profile: release without fat LTO.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    target="$(uname -m)-unknown-linux-gnu" && \
    RUSTFLAGS="-C target-feature=+crt-static" \
      cargo build --locked --profile ci-image --target "$target" -p portcullis-operator --bin portcullis-operator && \
    cp "target/$target/ci-image/portcullis-operator" /portcullis-operator

FROM scratch
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /portcullis-operator /portcullis-operator
USER 65532:65532
EXPOSE 8443 9443 9090
ENTRYPOINT ["/portcullis-operator"]
CMD ["run"]
