# Multi-stage build of a small image with the static-ish berth binary.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p berth

FROM debian:bookworm-slim
COPY --from=build /src/target/release/berth /usr/local/bin/berth
COPY deploy/config.yml /etc/distribution/config.yml
RUN mkdir -p /var/lib/registry
VOLUME /var/lib/registry
EXPOSE 5000
ENTRYPOINT ["/usr/local/bin/berth", "serve"]
CMD ["/etc/distribution/config.yml"]
