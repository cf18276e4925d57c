# oxsync: self-hosted Cloud Sync server for OxideTerm.
#
#   docker build -t oxsync .
#   docker run -d --name oxsync -p 8730:8730 -v oxsync-data:/data --env-file .env oxsync
#
# Configuration comes only from the environment variables of PROTOCOL.md section 9
# (see .env.example). The database lives in the /data volume.

# -- stage 1: build the zipapp from the sources ------------------------------
FROM python:3.12-slim AS build
WORKDIR /src
# .dockerignore lets in only build_pyz.sh, oxsync.py and admin.html (when present).
COPY . .
RUN bash build_pyz.sh /out

# -- stage 2: the runtime image ----------------------------------------------
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# The versions the test suite runs with; override with --build-arg CRYPTOGRAPHY_VERSION=...
# psycopg is imported only when DATABASE_URL names a PostgreSQL database
# (docker-compose.postgres.yml); build with --build-arg PSYCOPG_VERSION= to leave it out.
ARG CRYPTOGRAPHY_VERSION=48.0.0
ARG PSYCOPG_VERSION=3.3.9
# xxhash: only `oxsync import-reference` (moving from the reference server) needs it.
ARG XXHASH_VERSION=4.1.0
RUN pip install --no-cache-dir "cryptography==${CRYPTOGRAPHY_VERSION}" \
        ${PSYCOPG_VERSION:+"psycopg[binary]==${PSYCOPG_VERSION}"} \
        ${XXHASH_VERSION:+"xxhash==${XXHASH_VERSION}"}

# A fixed non-root uid/gid (10001), so the volume's owner is predictable on the host:
# for a bind mount instead of the named volume, chown -R 10001:10001 the host folder.
# (Not --system: system ids end at 999, and useradd warns about 10001 on every build.)
RUN groupadd --gid 10001 oxsync \
 && useradd --uid 10001 --gid oxsync --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin oxsync \
 && mkdir -p /app /data \
 && chown oxsync:oxsync /data \
 && chmod 0750 /data

COPY --from=build /out/oxsync.pyz /app/oxsync.pyz

ENV DB_PATH=/data/sync.db \
    LISTEN_ADDR=0.0.0.0:8730

WORKDIR /app
USER 10001:10001
VOLUME /data
EXPOSE 8730

# Asks /health on the port of LISTEN_ADDR; any error or non-200 answer is unhealthy.
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('LISTEN_ADDR', '0.0.0.0:8730').rpartition(':')[2]; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:%s/health' % port, timeout=3).status == 200 else 1)"]

# oxsync exits 0 on SIGTERM after finishing requests in flight (docker stop).
STOPSIGNAL SIGTERM
CMD ["python", "/app/oxsync.pyz", "serve"]
