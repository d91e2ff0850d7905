#!/usr/bin/env bash
# A clone that a container's user (any uid) may write: scripts/docker_smoke.sh uses it.
#
#   scripts/clone_for_container.sh SOURCE_REPO DEST
#
# --no-local: a plain local `git clone` hard-links the source's object files, and the
# chmod below would then change the SOURCE checkout's .git/objects too (0444 -> 0666).
# With git's own transport the clone's files are its own (tests/test_docker_files.py).
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 SOURCE_REPO DEST" >&2; exit 2; }
git clone -q --no-local "$1" "$2"
chmod -R a+rwX "$2"  # the container's uid may not be the clone's owner
