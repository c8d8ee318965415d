# syntax=docker/dockerfile:1
# The tiktok-events processor image: one image for the processor, the sandbox and the sample
# producer (they are subcommands of `tiktok-events`).
#
#   docker build -t tiktok-events-processor:dev .
#   docker run --rm -e KAFKA_BOOTSTRAP_SERVERS=broker:9092 -e TIKTOK_ACCESS_TOKEN_FILE=/run/secrets/token \
#     -v "$PWD/token:/run/secrets/token:ro" -v "$PWD/my-config.yaml:/etc/tiktok-events/config.yaml:ro" \
#     tiktok-events-processor:dev
#
# Layout: the code lives in /app/processor with its JSON Schemas beside it in /app/schemas
# (processor/schemas.py finds them at <package>/../schemas), so the package is installed into
# the venv in editable "compat" mode: the venv holds the dependencies, the console script and a
# .pth file naming /app, and nothing that could shadow /app/processor.

ARG PYTHON_VERSION=3.12.12
ARG DEBIAN_RELEASE=bookworm

# ---------------------------------------------------------------------------------------------
FROM python:${PYTHON_VERSION}-slim-${DEBIAN_RELEASE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /app
# The dependencies come from the lock alone (`make lock` writes it from pyproject.toml): every
# release pinned, every file checked against its SHA-256, wheels only (the slim image has no
# compiler), and --no-deps because the lock already lists the whole tree, so pip resolves
# nothing. This layer is rebuilt only when the lock changes.
COPY requirements.lock ./
RUN pip install --no-deps --require-hashes --only-binary=:all: -r requirements.lock
# Then the project itself, without dependencies, built by the locked setuptools (no isolated
# build environment fetched from the index). The editable install points at /app, where the
# final stage puts the code, so a placeholder package is all it needs here. setuptools is only
# the build backend: it leaves the venv, and pip check proves the venv complete without it.
COPY pyproject.toml README.md ./
RUN mkdir processor \
    && touch processor/__init__.py \
    && pip install --no-deps --no-build-isolation --config-settings editable_mode=compat --editable . \
    && pip uninstall --yes setuptools \
    && pip check \
    && rm -rf processor ./*.egg-info

# ---------------------------------------------------------------------------------------------
FROM python:${PYTHON_VERSION}-slim-${DEBIAN_RELEASE}

ARG APP_UID=10001
ARG APP_GID=10001

LABEL org.opencontainers.image.title="tiktok-events-processor" \
      org.opencontainers.image.description="Kafka clickstream to TikTok Events API processor" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONFAULTHANDLER=1

# A fixed, unprivileged UID/GID (not 1000, which hosts often give their first user), so
# Kubernetes' runAsNonRoot can check it and mounted secrets can be made readable to its group.
RUN groupadd --system --gid "${APP_GID}" app \
    && useradd --system --uid "${APP_UID}" --gid "${APP_GID}" --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin app

COPY --from=builder /opt/venv /opt/venv

WORKDIR /app
# processor/ and schemas/ side by side: the schemas are found at <package dir>/../schemas.
COPY processor/ /app/processor/
COPY schemas/ /app/schemas/
COPY config/ /app/config/
# The default configuration (the example's mappings; connection settings and the token come from
# the environment). Kubernetes and compose mount their own over it.
COPY config/example.yaml /etc/tiktok-events/config.yaml
# Byte-compiled once here: the root filesystem is read-only at run time.
RUN python -m compileall -q /app/processor

USER ${APP_UID}:${APP_GID}

# /metrics, /healthz (liveness) and /readyz (readiness) for every worker of the container:
# with --workers N the parent process serves them all on this one port.
EXPOSE 9464

# No curl in the slim image: the standard library asks /healthz (any non-2xx answer or
# connection error raises, so the check fails). METRICS_PORT overrides the port like it does
# for the processor.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('METRICS_PORT', '9464'), timeout=4)"]

ENTRYPOINT ["tiktok-events"]
CMD ["run", "--config", "/etc/tiktok-events/config.yaml"]
