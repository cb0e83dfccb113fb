# syntax=docker/dockerfile:1
# boxd in a container: `docker build -t boxd .` (BuildKit), then for example
#
#   docker run -d --name boxd \
#     -v boxd-state:/var/lib/boxd -v boxd-run:/run/boxd \
#     -v /etc/boxd/boxd.toml:/etc/boxd/boxd.toml:ro \
#     -v /srv/backups:/srv/backups:ro -p 127.0.0.1:9464:9464 boxd
#
# Configuration comes from the mounted /etc/boxd/boxd.toml and/or BOXD_<SECTION>__<KEY>
# variables (e.g. -e BOXD_DAEMON__ALLOWED_SOURCES='["/srv/backups"]'). The control socket is
# /run/boxd/boxd.sock in the boxd-run volume; share that volume with the backup software.
# Other commands run through the same entrypoint: `docker run --rm -i -v boxd-state:/var/lib/boxd
# boxd token import -` stores a token, `docker exec boxd boxd status` asks the running daemon.

# --- build: wheels for boxd and its dependencies --------------------------------------------
FROM python:3.11-slim AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY boxd ./boxd
RUN pip wheel --wheel-dir /wheels .

# --- run: the wheels only; no compiler, no pip cache, no source tree -------------------------
FROM python:3.11-slim

LABEL org.opencontainers.image.title="boxd" \
      org.opencontainers.image.description="Backup daemon that streams backup jobs into Box" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    BOXD_HTTP__LISTEN=0.0.0.0:9464 \
    BOXD_HEALTHCHECK_URL=http://127.0.0.1:9464/healthz

# The same user as systemd/boxd.sysusers; a fixed uid/gid so volumes and the shared socket
# keep their owner across rebuilds.
RUN groupadd --system --gid 10001 boxd \
 && useradd --system --no-log-init --uid 10001 --gid boxd --home-dir /var/lib/boxd \
      --shell /usr/sbin/nologin boxd \
 && install -d -o boxd -g boxd -m 0700 /var/lib/boxd \
 && install -d -o boxd -g boxd -m 0750 /run/boxd \
 && install -d -m 0755 /etc/boxd

RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels /wheels/boxd-*.whl \
 && boxd --help > /dev/null

USER 10001:10001
WORKDIR /var/lib/boxd
VOLUME ["/var/lib/boxd", "/run/boxd"]
EXPOSE 9464

# /healthz answers while the event loop turns; slim images have no curl, so ask Python.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; sys.exit(0 if urllib.request.urlopen(os.environ['BOXD_HEALTHCHECK_URL'], timeout=4).status == 200 else 1)"]

STOPSIGNAL SIGTERM
ENTRYPOINT ["boxd"]
CMD ["serve"]
