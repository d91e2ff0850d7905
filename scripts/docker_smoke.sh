#!/usr/bin/env bash
# Docker smoke test: build the image, then run a tiny pipeline in it on a fresh clone, as
# the calling user and as another uid, and check what the stages DID.
#
#   scripts/docker_smoke.sh                          # no registry: makes a local Debian 12 base first (root)
#   BASE=debian:12-slim scripts/docker_smoke.sh      # with registry access
#   SMOKE_BREAK=prepare scripts/docker_smoke.sh      # break a stage on purpose: the smoke test must fail
#
# It checks, in the container: `hsa --help`; an edit made in the mounted checkout is what
# `dvc exp run` runs; the committed metrics files, deleted first, come back with fresh
# content (a policy trained 4 steps, a closed-loop evaluation); every file written into the
# mount belongs to the uid that ran the container; a second uid (no passwd entry, no git
# identity of its own) reruns training with another learning rate.
#
# Needs a running Docker engine. On a machine with only the client (as root):
#   apt-get install docker.io debootstrap; dockerd --iptables=false --storage-driver=vfs &
# With vfs every layer is a full copy: a first build needs about 40 GB free.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
BASE=${BASE:-hsa-local-python}
TAG=${TAG:-hsa-pipeline:smoke}
OTHER_UID=${OTHER_UID:-4321}

say() { echo "docker smoke: $*"; }
fail() { echo "docker smoke: FAILED: $*" >&2; exit 1; }

# --- room to build
driver=$(docker info --format '{{.Driver}}')
root_dir=$(docker info --format '{{.DockerRootDir}}')
need_gb=15
if [ "$driver" = vfs ]; then  # every layer a full copy: a first build ~40 GB, a rebuild of the code layers ~20 GB
    need_gb=$(docker image inspect "$TAG" > /dev/null 2>&1 && echo 20 || echo 40)
fi
free_gb=$(( $(df -Pk "$root_dir" 2>/dev/null | awk 'NR==2 {print $4}' || echo 0) / 1048576 ))
[ "$free_gb" -ge "$need_gb" ] || fail "$free_gb GB free under $root_dir; the $driver storage driver needs about $need_gb GB"

# --- a base image without a registry: Debian 12 (Python 3.11) made with debootstrap
if ! docker image inspect "$BASE" > /dev/null 2>&1; then
    [ "$BASE" = hsa-local-python ] || fail "base image $BASE not found (docker pull it first)"
    [ "$(id -u)" = 0 ] || fail "making the local base needs root (debootstrap); run this once as root"
    rootfs=$(mktemp -d)
    debootstrap --variant=minbase --include=python3,python3-venv,git,ca-certificates bookworm "$rootfs" \
        http://deb.debian.org/debian
    cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"  # trust what this host trusts
    chmod 755 "$rootfs"  # mktemp -d is 0700: the image's / would be unreachable for non-root users
    tar -C "$rootfs" -c . | docker import - hsa-local-python
    rm -rf "$rootfs"
fi

docker build --network host --build-arg BASE="$BASE" -t "$TAG" .
docker image prune -f > /dev/null  # the previous build's layers (vfs: gigabytes each)
docker run --rm "$TAG" hsa --help > /dev/null || fail "hsa --help in the image"
say "image $TAG: $(docker image inspect "$TAG" --format '{{.Size}}' | awk '{printf "%.2f GB", $1 / 1e9}')"

# --- a fresh clone per uid, its committed outputs removed, a stage edited
work=$(mktemp -d)
chmod 755 "$work"
cleanup() {  # the other uid's files are not ours to delete: hand them back first (as root in the container)
    docker run --rm --user 0 -v "$work:/w" "$TAG" chown -R "$(id -u):$(id -g)" /w > /dev/null 2>&1 || true
    chmod -R u+rwX "$work" 2> /dev/null || true
    rm -rf "$work" 2> /dev/null || echo "docker smoke: could not remove $work" >&2
}
trap 'rc=$?; cleanup; exit $rc' EXIT
marker="SMOKE-EDIT-$RANDOM$RANDOM"
fresh_clone() {  # directory
    scripts/clone_for_container.sh "$repo" "$1"  # no hard links into the source: see that script
    rm -f "$1/outputs/eval/metrics.json" "$1/outputs/train/metrics.json"
    python3 - "$1/hsa_pipeline/data/prepare.py" "$marker" <<'PY'
import sys
path, marker = sys.argv[1], sys.argv[2]
src = open(path).read()
anchor = "    layout = resolve_layout(cfg.episodes_dir, cfg.layout)\n"
assert anchor in src, "run_prepare changed: update the smoke test's edit"
open(path, "w").write(src.replace(anchor, f"    print({marker!r})\n" + anchor, 1))
PY
    if [ -n "${SMOKE_BREAK:-}" ]; then
        echo "raise RuntimeError('broken on purpose by SMOKE_BREAK')" >> "$1/stages/$SMOKE_BREAK.py"
        say "stage $SMOKE_BREAK broken on purpose: the run below must fail"
    fi
    chmod -R a+rwX "$1"  # the files edited above too
}

tiny=(-S world.frames_per_touch=12 -S world.max_joint_speed_deg=360 -S synth.episodes=4 -S act.chunk_size=5
      -S data.min_length=5 -S act.hidden_dim=32 -S act.dim_feedforward=64 -S act.heads=2 -S act.enc_layers=1
      -S act.dec_layers=1 -S act.vae_enc_layers=1 -S train.steps=4 -S train.val_every=4 -S train.log_every=2
      -S features.workers=0 -S eval.rollouts=2 -S eval.max_steps=6 -S eval.report_frames=1)
run_as() {  # uid, clone, then the command
    local uid=$1 clone=$2; shift 2
    docker run --rm --network none --shm-size=1g --user "$uid:$uid" -v "$clone:/workspace" "$TAG" "$@"
}
check_outputs() {  # clone, uid
    python3 - "$1" <<'PY' || fail "the stages' outputs in $1"
import json, sys
root = sys.argv[1]
t = json.load(open(f"{root}/outputs/train/metrics.json"))
e = json.load(open(f"{root}/outputs/eval/metrics.json"))
assert (t["start_step"], t["steps_trained"], t["step"]) == (0, 4, 4), t
assert e["val_frames"] > 0 and e["closed_loop"]["rollouts"] == 2 and "chunk_l1" in e, e
PY
    local others
    others=$(find "$1/outputs" "$1/data" "$1/.dvc" -type f -newer "$1/dvc.yaml" ! -uid "$2" | head -3)
    [ -z "$others" ] || fail "files in the mount that are not uid $2's: $others"
}

for uid in "$(id -u)" "$OTHER_UID"; do
    clone=$work/repo-$uid
    fresh_clone "$clone"
    out=$(run_as "$uid" "$clone" dvc exp run "${tiny[@]}" 2>&1) || { echo "$out" | tail -30; fail "dvc exp run as uid $uid"; }
    echo "$out" | grep -q "$marker" || fail "uid $uid: the container did not run the checkout's edited prepare.py"
    check_outputs "$clone" "$uid"
    say "uid $uid: dvc exp run ran the checkout's edited code; fresh metrics (4 steps trained, 2 rollouts); every new file is uid $uid's"
done

# --- the second uid again (no passwd entry, the image's git identity): a new learning rate retrains
before=$(cat "$clone/outputs/eval/metrics.json")
out=$(run_as "$OTHER_UID" "$clone" dvc exp run "${tiny[@]}" -S train.lr=0.001 2>&1) \
    || { echo "$out" | tail -30; fail "second dvc exp run as uid $OTHER_UID"; }
echo "$out" | grep -q "Running stage 'train'" || fail "uid $OTHER_UID: train did not rerun"
[ "$(cat "$clone/outputs/eval/metrics.json")" != "$before" ] || fail "uid $OTHER_UID: evaluation did not change"
say "uid $OTHER_UID: a second experiment retrained and re-evaluated"
say "ok ($TAG from $BASE)"
