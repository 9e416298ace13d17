# roomcast container image: `docker build -t roomcast .`, then `docker run roomcast serve`
# (configuration from the environment, see `roomcast serve --help`), or see docker-compose.yml.
# With podman/buildah build with `--format docker` (or BUILDAH_FORMAT=docker): the default OCI
# format drops HEALTHCHECK.

# ---- build stage: exactly the "@build" section of tools/packages.txt (checked by
# tests/integration/test_deploy.py) ----
FROM debian:bookworm-slim AS build
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        build-essential \
        pkg-config \
        libwebsockets-dev \
        libwebsockets-evlib-uv \
        libuv1-dev \
        libpq-dev \
        libhiredis-dev \
        libjson-c-dev \
        libjwt-dev \
        libssl-dev \
        uthash-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# Stripped (install -s): the image ships no symbols or debug sections (about a third of the size);
# tools/check-deploy.sh checks it. Debug with a local `make` build instead.
RUN make roomcast && build/rel/roomcast version \
    && install -s -m 0755 build/rel/roomcast /usr/local/bin/roomcast

# ---- runtime stage: shared libraries only ----
FROM debian:bookworm-slim
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        libwebsockets17 \
        libwebsockets-evlib-uv \
        libuv1 \
        libpq5 \
        libhiredis0.14 \
        libjson-c5 \
        libjwt0 \
        libssl3 \
        ca-certificates \
        curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin roomcast
COPY --from=build /usr/local/bin/roomcast /usr/local/bin/roomcast
USER roomcast
ENV PORT=8080 HOST=0.0.0.0
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8080/ready || exit 1
ENTRYPOINT ["roomcast"]
CMD ["serve"]
