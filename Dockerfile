# Multi-stage build of the `lifecycle` binary into a distroless, non-root image.
#   docker build -t lifecycle-engine:latest .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY tests ./tests
# the other members of the cargo workspace (only the controller is built)
COPY tools/bench ./tools/bench
RUN cargo build --release --locked --bin lifecycle

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/lifecycle /usr/local/bin/lifecycle
# the shipped rules (the top-level lifecycle.yaml and templates/ are links to them)
COPY deploy/base/rules/lifecycle.yaml /etc/lifecycle/lifecycle.yaml
COPY deploy/base/rules/templates /etc/lifecycle/templates
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/lifecycle"]
CMD ["run", "--rules=/etc/lifecycle/lifecycle.yaml"]
