# syntax=docker/dockerfile:1.7
# labelfleet GPU worker: CUDA runtime + Python 3.11 + torch (cu130) + the models code.
# No model weights inside by default: they are fetched into the /models volume at start
# (`labelfleet models fetch`). Build from the repository root:
#
#   docker build -f deploy/worker.Dockerfile -t labelfleet-worker:0.1.0 .
#   # bake a preset's weights into the image (air-gapped clusters; image grows by several GB):
#   docker build -f deploy/worker.Dockerfile --build-arg BAKE_MODELS=default -t labelfleet-worker:0.1.0-default .
#
# Base tags are pinned; pin them by digest too in production (`nvidia/cuda:TAG@sha256:...`), which
# needs a registry lookup that our offline CI cannot do.

# ---------------------------------------------------------------------------------------------
# Builder: a relocatable CPython 3.11 (python-build-standalone via uv) and a venv with the deps.
# ---------------------------------------------------------------------------------------------
# The plain CUDA runtime base is enough: the torch cu130 wheels bring their own cuDNN/cuBLAS/NCCL
# (nvidia-*-cu13 wheels), so a -cudnn- base would only ship cuDNN twice.
FROM nvidia/cuda:13.0.1-runtime-ubuntu24.04 AS builder

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Compilers for the source-only extensions among the model deps (GroundingDINO's ops, pycocotools).
# Distro package versions are not pinned: the base tag pins the distro, and Ubuntu drops superseded
# security-pocket versions, which would break rebuilds.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*

COPY --from=ghcr.io/astral-sh/uv:0.8.15 /uv /usr/local/bin/uv

ENV UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1

# torch==2.14.1 is the CUDA 13.0 build (+cu130) from the PyTorch index.
ARG PYTHON_VERSION=3.11.13
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130
RUN uv python install "${PYTHON_VERSION}" \
    && uv venv --python "${PYTHON_VERSION}" /opt/venv

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

WORKDIR /src
# Dependencies first (better layer caching): torch/torchvision, then the package with its models extra.
RUN uv pip install --index-strategy unsafe-best-match --extra-index-url "${TORCH_INDEX_URL}" \
        "torch==2.14.1" "torchvision==0.29.1"
COPY pyproject.toml README.md ./
COPY labelfleet/ labelfleet/
COPY orchestrator/ orchestrator/
COPY workers/ workers/
# GroundingDINO builds its extension against the torch installed above.
RUN uv pip install --index-strategy unsafe-best-match --extra-index-url "${TORCH_INDEX_URL}" \
        --no-build-isolation-package groundingdino-py ".[models]"

# ---------------------------------------------------------------------------------------------
# Runtime: CUDA runtime libs, the interpreter, the venv, a non-root user and an empty /models.
# ---------------------------------------------------------------------------------------------
FROM nvidia/cuda:13.0.1-runtime-ubuntu24.04 AS runtime

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# OpenCV's runtime libraries; tini (PID 1) forwards SIGTERM so Celery's warm shutdown sees it.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgl1 libglib2.0-0t64 tini \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 labelfleet \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/labelfleet --create-home --shell /usr/sbin/nologin labelfleet \
    && install -d -o 10001 -g 10001 /models /app

COPY --from=builder /opt/python /opt/python
COPY --from=builder /opt/venv /opt/venv
COPY --chown=root:root --chmod=0755 deploy/wait_for_migrations.py /usr/local/bin/labelfleet-wait-for-migrations

ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/home/labelfleet \
    XDG_CACHE_HOME=/tmp/cache \
    MPLCONFIGDIR=/tmp/matplotlib \
    LABELFLEET_MODEL_DIR=/models \
    HF_HOME=/models/huggingface \
    TORCH_HOME=/models/torch \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

WORKDIR /app
USER 10001:10001

# Optional: bake a preset's weights into the image (BAKE_MODELS=default|fast|tiny-random).
# Docker copies them into an empty named volume mounted on /models; in Kubernetes set
# workers.fetchModels.enabled=false and do not mount a model cache over them.
ARG BAKE_MODELS=""
RUN if [ -n "${BAKE_MODELS}" ]; then labelfleet models fetch "${BAKE_MODELS}"; fi

VOLUME ["/models"]

# Fail the build if the CUDA build of torch is missing (works without a GPU).
RUN python -c "import torch, sys; sys.exit(0 if torch.version.cuda else 'torch without CUDA')"

ENTRYPOINT ["/usr/bin/tini", "--", "labelfleet"]
CMD ["worker", "--queues", "lf.default", "--concurrency", "1"]
