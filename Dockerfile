# roomcast container image: `docker build -t roomcast .`, then `docker run roomcast serve`
# (configuration from the environment, see `roomcast serve --help`), or see docker-compose.yml.

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
RUN make roomcast && build/rel/roomcast version

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
COPY --from=build /src/build/rel/roomcast /usr/local/bin/roomcast
USER roomcast
ENV PORT=8080 HOST=0.0.0.0
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8080/ready || exit 1
ENTRYPOINT ["roomcast"]
CMD ["serve"]
