# hsa-pipeline for GPU hosts. The torch wheels pinned in constraints.txt carry their own
# CUDA 13 runtime libraries; the host needs an NVIDIA driver and the container toolkit.
#
#   docker build -t hsa-pipeline .                                   # CUDA runtime base
#   docker build --build-arg BASE=hsa-local-python -t hsa-pipeline . # a locally made base
#
# BASE must provide python3 (3.10-3.12) with venv. No data, caches or outputs are baked in
# (.dockerignore): mount the checkout at /workspace and the data where params.yaml says.
ARG BASE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04
FROM ${BASE}

ARG DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev git ca-certificates \
    && rm -rf /var/lib/apt/lists/*

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HOME=/workspace/.cache/huggingface

# Dependencies first (a layer that survives code changes), pinned by constraints.txt,
# the same file CI installs from.
COPY pyproject.toml constraints.txt README.md /opt/hsa/
COPY hsa_pipeline/__init__.py /opt/hsa/hsa_pipeline/__init__.py
RUN python3 -m venv "$VIRTUAL_ENV" \
    && pip install -c /opt/hsa/constraints.txt /opt/hsa \
    && pip uninstall -y hsa-pipeline

COPY hsa_pipeline /opt/hsa/hsa_pipeline
RUN pip install --no-deps -c /opt/hsa/constraints.txt /opt/hsa \
    && hsa --help > /dev/null \
    && git config --system --add safe.directory /workspace

# A non-root user. For files on the host owned by the host user, run with
# `--user "$(id -u):$(id -g)"` (README, "GPU hosts"); HOME then points at /tmp.
RUN useradd --create-home --uid 1000 --shell /bin/bash hsa
ENV HOME=/tmp
WORKDIR /workspace
USER 1000:1000
CMD ["dvc", "repro"]
