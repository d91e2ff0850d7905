#!/usr/bin/env bash
# Docker smoke test: build the image FROM a local base image and run `hsa --help` and a
# tiny demo pipeline inside it, as the invoking (non-root) user on a mounted clone.
#
#   BASE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04 scripts/docker_smoke.sh   # with registry access
#   scripts/docker_smoke.sh                                                      # no registry: makes a local base
#
# Without registry access the base is made here with debootstrap (Debian bookworm,
# python3 3.11) and `docker import`. Needs a running Docker engine; on a machine with only
# the client: apt-get install docker.io debootstrap; dockerd --iptables=false --storage-driver=vfs &
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${BASE:-hsa-local-python}
TAG=${TAG:-hsa-pipeline:smoke}

if ! docker image inspect "$BASE" > /dev/null 2>&1; then
    if [ "$BASE" != "hsa-local-python" ]; then
        echo "base image $BASE not found (docker pull it first)" >&2
        exit 1
    fi
    rootfs=$(mktemp -d)
    debootstrap --variant=minbase --include=python3,python3-venv,python3-dev,git,ca-certificates \
        bookworm "$rootfs" http://deb.debian.org/debian
    # a base made here trusts what this machine trusts (e.g. a TLS-inspecting proxy's CA)
    cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
    tar -C "$rootfs" -c . | docker import - hsa-local-python
    rm -rf "$rootfs"
fi

docker build --network host --build-arg BASE="$BASE" -t "$TAG" .
docker run --rm "$TAG" hsa --help

work=$(mktemp -d)
git clone -q . "$work/repo"
docker run --rm --network none --user "$(id -u):$(id -g)" -v "$work/repo:/workspace" "$TAG" \
    dvc exp run -S synth.episodes=3 -S synth.touches=1 -S synth.frames_per_touch=12 -S act.chunk_size=5 \
        -S data.min_length=5 -S train.steps=4 -S train.val_every=4 -S train.log_every=2
test -f "$work/repo/outputs/eval/metrics.json"
test "$(stat -c %u "$work/repo/outputs/eval/metrics.json")" = "$(id -u)"
echo "docker smoke: ok ($TAG from $BASE)"
