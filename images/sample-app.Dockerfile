# syntax=docker/dockerfile:1
# The README demo's sample app (proxy/examples/sample_app.rs), for the Tiltfile.
FROM rust:1.94-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    target="$(uname -m)-unknown-linux-gnu" && \
    RUSTFLAGS="-C target-feature=+crt-static" \
      cargo build --locked --profile ci-image --target "$target" -p portcullis-proxy --example sample_app && \
    cp "target/$target/ci-image/examples/sample_app" /sample_app

FROM scratch
COPY --from=build /sample_app /sample_app
USER 65532:65532
ENTRYPOINT ["/sample_app"]
