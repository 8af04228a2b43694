# Berth's container image: the release build of `berth` on a distroless base (glibc and CA
# certificates; no shell, no package manager), running as uid/gid 65532.
#
#   docker build -t berth .
#   docker run -p 5000:5000 -v registry-data:/var/lib/registry berth
#
# Configuration: /etc/distribution/config.yml (deploy/config.yml: filesystem storage in
# /var/lib/registry, API on :5000, health and metrics on :5001); mount your own file there or
# override keys with REGISTRY_<SECTION>_<KEY> variables. See deploy/README.md.
#
# The base images are arguments, so a mirror or a pinned digest can be used. Both must stay on
# Debian 12: the binary links the builder's glibc dynamically, the runtime image provides it.
ARG RUST_IMAGE=docker.io/library/rust:1-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
# The one release build (scripts/build-release.sh, also documented for packagers): the same
# package, lockfile, target and features CI tests, in the release profile. The caches only
# speed up rebuilds; the binary is copied out of them by the script.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    scripts/build-release.sh /out/bin \
 && mkdir -p /out/data

FROM ${RUNTIME_IMAGE}
# `berth`, and `registry` (a symlink to it: distribution's command line, for
# `docker exec <container> registry garbage-collect /etc/distribution/config.yml`). A directory
# copy keeps the symlink a symlink.
COPY --from=build /out/bin/ /usr/local/bin/
COPY deploy/config.yml /etc/distribution/config.yml
# The data directory belongs to the unprivileged user, so a fresh named volume does too.
COPY --from=build --chown=65532:65532 /out/data /var/lib/registry
# Numeric, so that Kubernetes' runAsNonRoot can verify it without a runAsUser.
USER 65532:65532
VOLUME ["/var/lib/registry"]
# 5000: the registry API (with /livez and /readyz); 5001: /debug/health, /livez, /readyz and
# /metrics (http.debug in deploy/config.yml), for probes and scrapers, not for clients.
EXPOSE 5000 5001
# No HEALTHCHECK: the image has no shell or HTTP client to run one with (and Kubernetes ignores
# it). Orchestrators probe /livez and /readyz over HTTP themselves (deploy/kubernetes).
# distribution's entrypoint: `registry` serves a config path given as the command, and runs
# distribution's other commands (`docker run <image> garbage-collect /etc/distribution/config.yml`).
# Berth's own commands: `--entrypoint berth`.
ENTRYPOINT ["/usr/local/bin/registry"]
CMD ["/etc/distribution/config.yml"]
