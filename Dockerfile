# hsa-pipeline for GPU hosts (and CPU machines). docs/gpu.md has the run lines.
#
#   docker build -t hsa-pipeline .                                     # Debian 12 base, pinned by digest
#   docker build --build-arg BASE=hsa-local-python -t hsa-pipeline .  # a locally made base (scripts/docker_smoke.sh)
#
# The torch wheels pinned in constraints.txt carry their own CUDA 13 libraries, so the base
# is a plain OS: no CUDA ships twice. The host needs an NVIDIA driver for CUDA 13 (580 or
# newer) and the NVIDIA container toolkit. BASE must provide Debian/Ubuntu's apt; python3
# comes from it (Debian 12: 3.11, the version the constraints are pinned on).
#
# Code: the image holds a copy, but a checkout mounted at /workspace comes first on
# PYTHONPATH, and the DVC stages run `python -m stages.<name>` from it: what DVC hashes is
# what runs. Any user: run with --user "$(id -u):$(id -g)"; USER/LOGNAME/HOME are set so
# nothing needs a passwd entry, and git has a default identity (a mounted
# ~/.gitconfig at /home/hsa/.gitconfig or GIT_AUTHOR_*/GIT_COMMITTER_* override it).
# Layer order: everything small first, then the dependencies (the big layer: only
# pyproject.toml and constraints.txt go into it), then the code in two small layers, so a
# code or README change rebuilds only those two.
# The digest below was not pulled here (no registry); refresh it with
# `docker buildx imagetools inspect debian:12-slim`.
ARG BASE=debian:12-slim@sha256:1209d8fd77def86ceb6663deef7956481cc6c14a25e1e64daec12c0ceffcc19d
FROM ${BASE}

ARG DEBIAN_FRONTEND=noninteractive
# tini: an init that reaps DataLoader and torchrun children and forwards signals; libegl1,
# libopengl0 and Mesa's drivers: MuJoCo renders gym-aloha's tasks headless through EGL (on a
# GPU host the NVIDIA toolkit's EGL when the container gets the `graphics` capability)
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv git ca-certificates tini \
       libegl1 libopengl0 libgl1-mesa-dri \
    && rm -rf /var/lib/apt/lists/* \
    && git config --system user.name "hsa-pipeline container" \
    && git config --system user.email "hsa-pipeline@localhost" \
    && git config --system --add safe.directory '*' \
    && useradd --uid 1000 --no-create-home --home-dir /home/hsa --shell /bin/bash hsa \
    && mkdir -p /opt/venv /opt/hsa /home/hsa /workspace \
    && chown 1000:1000 /opt/venv /opt/hsa \
    && chmod 1777 /home/hsa

# Caches live in HOME (any uid may write there), never in the mounted checkout.
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/home/hsa \
    USER=hsa \
    LOGNAME=hsa \
    XDG_CACHE_HOME=/home/hsa/.cache \
    HF_HOME=/home/hsa/.cache/huggingface \
    TORCH_HOME=/home/hsa/.cache/torch \
    PYTHONPATH=/workspace
WORKDIR /workspace
USER 1000:1000
ENTRYPOINT ["tini", "--"]
CMD ["dvc", "repro"]
# hsa serve's default port (`docker run -p 8000:8000 -e HSA_API_KEY ... hsa serve --host 0.0.0.0`:
# beyond the loopback it refuses to start without a key unless given --insecure)
EXPOSE 8000

# The dependencies, from pyproject.toml's list pinned by constraints.txt.
COPY --chown=1000:1000 pyproject.toml constraints.txt /opt/hsa/
RUN python3 -m venv "$VIRTUAL_ENV" \
    && pip install pip==26.3 \
    && python3 -c "import tomllib; deps = tomllib.load(open('/opt/hsa/pyproject.toml', 'rb'))['project']['dependencies']; print(*deps, sep='\n')" > /opt/hsa/requirements.txt \
    && pip install -c /opt/hsa/constraints.txt -r /opt/hsa/requirements.txt

# The code (.dockerignore lets in only the package, the stages and the README).
COPY --chown=1000:1000 . /opt/hsa/
RUN pip install --no-deps /opt/hsa && hsa --help > /dev/null
