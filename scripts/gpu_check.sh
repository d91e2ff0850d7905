#!/usr/bin/env bash
# Every figure only a CUDA host can give, in one go (an estimated 8-12 minutes on one
# H100/H200; not yet timed there at this commit):
#   compare   the same frames encoded on the CPU (float32) and the GPU (bf16), token by token
#   train     train + evaluate the demo on the GPU (train.compile auto: CUDA graphs; graph breaks
#             counted), closed loop included
#   tests     the CUDA tests: resume = an uninterrupted run, validation leaves the run alone,
#             the compiled step follows the eager loss curve over 200 steps, caches held on
#             the host give the batches held on the GPU, the compiled policy answers as eager
#   torchrun  300 training steps under torchrun (NCCL, one process)
#   bench     training steps/s, X-Trainer config: eager and compiled at batch 16, compiled at 64,
#             raw images + ResNet18 at 16; the policy's control step (p50, p99), eager and
#             compiled (CUDA graphs)
#   features  the feature stage against its bare encoder (ViT-B-16, 4x the demo episodes)
#   serve     8 clients at 50 Hz beside an abusive one against `hsa serve --workers 4` on the GPU,
#             and against `--workers 8 --device cpu` (the host's cores)
# Needs the demo's data/demo and outputs/prepare, outputs/geometry.zarr (`dvc repro geometry`)
# and the project importable. Usage: scripts/gpu_check.sh OUT_DIR [check ...]  (default: all)
# Writes two files, as few as a device run returns: OUT_DIR/summary.json (every check's status
# and seconds, every figure: scripts/gpu_summary.py) and OUT_DIR/logs.tar.gz (every log),
# both rewritten after each check. A check that runs past CHECK_TIMEOUT seconds (300) is
# stopped. Where one command may run 10 minutes, split it: `compare train tests torchrun`,
# then `bench features serve`.
set -uo pipefail
out=${1:?usage: scripts/gpu_check.sh OUT_DIR [compare|train|tests|torchrun|bench|features|serve ...]}
shift
checks=${*:-compare train tests torchrun bench features serve}
mkdir -p "$out"
out=$(cd "$out" && pwd)
s=$(mktemp -d)  # the scratch folder: logs and figure files, packed at the end
here=$(cd "$(dirname "$0")" && pwd)
hsa() { python3 -m hsa_pipeline.cli "$@"; }
step() { echo; echo "=== $* ($(date +%T))"; }
ensure_features() { [ -e outputs/features.zarr ] || hsa features --set features.workers=8 >> "$s/features_gpu.log" 2>&1; }
finish() {
  python3 "$here/gpu_summary.py" "$s" "$out/summary.json"
  tar czf "$out/logs.tar.gz" -C "$s" .
}
trap finish EXIT

step environment
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, open_clip, zarr; print('torch', torch.__version__, 'open_clip', open_clip.__version__, 'zarr', zarr.__version__, torch.cuda.get_device_name())"
  echo "$(nproc) CPU cores"; } | tee "$s/environment.txt"

run_check() {  # name: runs check_<name>, its output to <name>.log, its status and seconds to checks.tsv
  # A check gets CHECK_TIMEOUT seconds (default 300), then it and its processes are stopped
  # (exit 124) and the next runs; the summary is rewritten after every check, so a device
  # command cut off at its own limit still returns what finished.
  local name=$1 t0=$SECONDS status
  step "$name"
  timeout --kill-after=10 "${CHECK_TIMEOUT:-300}" bash -c "check_$name" > "$s/$name.log" 2>&1
  status=$?
  tail -5 "$s/$name.log"
  printf '%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - t0))" >> "$s/checks.tsv"
  echo "$name: exit $status, $((SECONDS - t0)) s"
  finish
}

check_compare() {
  hsa features --set features.device=cpu --set features.workers=8 || return
  rm -rf /tmp/features_cpu.zarr && mv outputs/features.zarr /tmp/features_cpu.zarr
  hsa features --set features.workers=8 || return
  python3 benchmarks/compare_features.py /tmp/features_cpu.zarr outputs/features.zarr
}
check_train() {
  ensure_features
  TORCH_LOGS=graph_breaks hsa train || return
  echo "graph breaks: $(grep -c 'Graph break' "$s/train.log")"
  hsa evaluate --set eval.rollouts=50 || return
  cp outputs/train/metrics.json "$s/train_metrics.json"; cp outputs/eval/metrics.json "$s/eval_metrics.json"
}
check_tests() {
  python3 -m pytest -q -p no:cacheprovider tests/test_train.py tests/test_serve.py -k "cuda" -m "slow or not slow"
}
check_torchrun() {
  ensure_features
  torchrun --standalone --nproc_per_node=1 -m stages.train --set train.steps=300 --set train.resume=false
}
check_bench() {
  python3 benchmarks/bench_train.py --device cuda --steps 50 --json "$s/bench_train_b16_eager.json" || return
  python3 benchmarks/bench_train.py --device cuda --steps 200 --sides cached --compile reduce-overhead \
    --json "$s/bench_train_b16_compiled.json" || return
  python3 benchmarks/bench_train.py --device cuda --steps 100 --sides cached --compile reduce-overhead --batch 64 \
    --json "$s/bench_train_b64_compiled.json" || return
  python3 benchmarks/bench_policy.py --device cuda --steps 200 --json "$s/bench_policy.json" || return
  python3 benchmarks/bench_policy.py --device cuda --steps 200 --compile reduce-overhead \
    --json "$s/bench_policy_compiled.json"
}
check_features() {
  rm -rf /tmp/big /tmp/prepare_demo && mkdir -p /tmp/big && cp -r outputs/prepare /tmp/prepare_demo
  for i in 1 2 3 4; do for f in data/demo/episodes/*.hdf5; do ln -sf "$PWD/$f" "/tmp/big/r${i}_$(basename "$f")"; done; done
  hsa prepare --set synth.enabled=false --set data.episodes_dir=/tmp/big || return
  dd if=/dev/zero of=/tmp/ddtest bs=64M count=16 oflag=direct 2>&1 | tail -1; rm -f /tmp/ddtest
  python3 benchmarks/bench_features.py --set features.model=ViT-B-16 --set features.batch_size=256 \
    --set features.workers=12 --json "$s/bench_features.json" 2>&1 | grep -v "img/s\]"
  local status=$?
  rm -rf outputs/prepare && mv /tmp/prepare_demo outputs/prepare
  return $status
}
check_serve() {  # 8 robots ask at the same instant: on the GPU one after another; 8 CPU workers side by side
  python3 benchmarks/bench_serve_load.py --hz 50 --seconds 10 --workers 4 --json "$s/bench_serve_load.json" || return
  python3 benchmarks/bench_serve_load.py --hz 50 --seconds 10 --workers 8 --device cpu \
    --json "$s/bench_serve_load_cpu_workers8.json"
}

export s here
export -f hsa step ensure_features check_compare check_train check_tests check_torchrun check_bench check_features \
  check_serve
for check in $checks; do case $check in
compare|train|tests|torchrun|bench|features|serve) run_check "$check" ;;
*) echo "unknown check '$check'; expected compare, train, tests, torchrun, bench, features or serve" >&2; exit 2 ;;
esac; done
step done
