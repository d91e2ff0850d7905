#!/usr/bin/env bash
# Every figure only a CUDA host can give, in two parts, each one device command of at most
# 540 s (each check has its own time limit; the limits of a part add up to less):
#
#   part1     compare   the same frames encoded on the CPU (float32) and the GPU (bf16), token by token (100 s)
#             train     `hsa train` + `hsa evaluate` (50 rollouts) of the demo with train.compile auto (CUDA
#                       graphs): graph breaks, recompiles and CUDA-graph skips counted (skips must be 0),
#                       the trainer's own steps/s after the compile (240 s)
#             tests     the CUDA tests: resume = an uninterrupted run, validation leaves the run alone, the
#                       compiled step follows the eager loss curve, caches held on the host give the batches
#                       held on the GPU, the compiled policy answers as eager from several threads (170 s)
#   part2     torchrun  two processes under torchrun: NCCL where the host has two GPUs, else gloo on the
#                       CPU (a real process group either way) (90 s)
#             bench     training steps/s at the X-Trainer config, batch 16, eager (and raw images +
#                       ResNet18) and compiled; the control step (p50, p99), eager and compiled (240 s)
#             features  the feature stage against its bare encoder (ViT-B-16, 4x the demo's episodes, in
#                       a scratch folder: the checkout's outputs/ are never touched) (110 s)
#             serve     8 clients at 50 Hz beside an abusive one against `hsa serve --workers 4` (60 s)
#
# Needs the demo's data/demo and outputs/prepare, outputs/geometry.zarr (`dvc repro geometry`)
# and the project importable. Usage: scripts/gpu_check.sh OUT_DIR part1|part2|CHECK ...
# Run part1, then part2, on the same machine: both use one inductor cache under .cache/
# (ignored by git, kept between device commands on a warm machine), so part2 reuses part1's
# kernels. Writes two files, as few as a device run returns: OUT_DIR/summary.json (every
# check's exit status and seconds, every figure: scripts/gpu_summary.py) and
# OUT_DIR/logs.tar.gz, both rewritten after each check. Each check's status is its own:
# its commands run under pipefail, and one that runs past its limit (CHECK_TIMEOUT
# overrides every limit) is stopped, with its processes, and recorded as exit 124.
set -uo pipefail
out=${1:?usage: scripts/gpu_check.sh OUT_DIR part1|part2|compare|train|tests|torchrun|bench|features|serve ...}
shift
[ $# -gt 0 ] || { echo "gpu_check: name part1, part2 or checks (each part is one device command of <= 540 s)" >&2; exit 2; }
declare -A LIMIT=([compare]=100 [train]=240 [tests]=170 [torchrun]=90 [bench]=240 [features]=110 [serve]=60)
checks=()
for arg in "$@"; do case $arg in
  part1) checks+=(compare train tests) ;;
  part2) checks+=(torchrun bench features serve) ;;
  compare|train|tests|torchrun|bench|features|serve) checks+=("$arg") ;;
  *) echo "unknown check '$arg'; expected part1, part2, compare, train, tests, torchrun, bench, features or serve" >&2
     exit 2 ;;
esac; done
mkdir -p "$out"
out=$(cd "$out" && pwd)
s=$(mktemp -d)  # the scratch folder: logs and figure files, packed after each check
here=$(cd "$(dirname "$0")" && pwd)
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$PWD/.cache/inductor}  # shared by part1 and part2
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-$PWD/.cache/triton}
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
  local name=$1 t0=$SECONDS status
  step "$name (limit ${CHECK_TIMEOUT:-${LIMIT[$name]}} s)"
  timeout --kill-after=10 "${CHECK_TIMEOUT:-${LIMIT[$name]}}" bash -o pipefail -c "check_$name" > "$s/$name.log" 2>&1
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
check_train() {  # the real trainer, compiled as by default on a GPU; what torch.compile did, counted
  ensure_features || return
  TORCH_LOGS=graph_breaks,recompiles,perf_hints hsa train 2> "$s/train_torch.log" || { tail -20 "$s/train_torch.log"; return 1; }
  python3 "$here/gpu_summary.py" --compiled-training "$s/train_torch.log" outputs/train/run/curves/train.tsv \
    "$(python3 -c "from hsa_pipeline.config import load_params; print(load_params().train.batch_size)")" \
    > "$s/train_compile.json" || return
  cat "$s/train_compile.json"
  hsa evaluate --set eval.rollouts=50 || return
  cp outputs/train/metrics.json "$s/train_metrics.json"; cp outputs/eval/metrics.json "$s/eval_metrics.json"
  python3 -c "import json, sys; sys.exit(json.load(open('$s/train_compile.json'))['cudagraph_skips'] != 0)" \
    || { echo "CUDA graphs were skipped on the default path (see train_torch.log)"; return 1; }
}
check_tests() {
  python3 -m pytest -q -p no:cacheprovider tests/test_train.py tests/test_serve.py -k "cuda" -m "slow or not slow"
}
check_torchrun() {  # a real process group: two processes
  ensure_features || return
  if [ "$(nvidia-smi -L | grep -c '^GPU')" -ge 2 ]; then
    torchrun --standalone --nproc_per_node=2 -m stages.train --set train.steps=200 --set train.resume=false
  else  # one GPU: two processes cannot share it under NCCL; gloo on the CPU exercises the same code
    torchrun --standalone --nproc_per_node=2 -m stages.train --set train.steps=20 --set train.resume=false \
      --set train.device=cpu --set train.val_every=20
  fi
}
check_bench() {
  python3 benchmarks/bench_train.py --device cuda --steps 50 --json "$s/bench_train_b16_eager.json" || return
  python3 benchmarks/bench_train.py --device cuda --steps 200 --sides cached --compile reduce-overhead \
    --json "$s/bench_train_b16_compiled.json" || return
  python3 benchmarks/bench_policy.py --device cuda --steps 200 --json "$s/bench_policy.json" || return
  python3 benchmarks/bench_policy.py --device cuda --steps 200 --compile reduce-overhead \
    --json "$s/bench_policy_compiled.json"
}
check_features() {  # in a scratch folder holding 4x the demo's episodes: nothing in the checkout changes
  local w
  w=$(mktemp -d)
  ln -s "$PWD/hsa_pipeline" "$PWD/stages" "$PWD/benchmarks" "$w/" && cp params.yaml "$w/" && mkdir "$w/big" || return
  for i in 1 2 3 4; do for f in data/demo/episodes/*.hdf5; do ln -s "$PWD/$f" "$w/big/r${i}_$(basename "$f")"; done; done
  cd "$w" || return
  python3 -m stages.prepare --set synth.enabled=false --set data.episodes_dir=big || return
  dd if=/dev/zero of="$w/ddtest" bs=64M count=16 oflag=direct 2>&1 | tail -1; rm -f "$w/ddtest"
  python3 benchmarks/bench_features.py --set synth.enabled=false --set data.episodes_dir=big \
    --set features.model=ViT-B-16 --set features.batch_size=256 --set features.workers=12 \
    --json "$s/bench_features.json" 2>&1 | sed '/img\/s\]/d'
}
check_serve() {  # 8 robots ask at the same instant, beside an abusive client
  python3 benchmarks/bench_serve_load.py --hz 50 --seconds 10 --workers 4 --json "$s/bench_serve_load.json"
}

export s here
export -f hsa step ensure_features check_compare check_train check_tests check_torchrun check_bench check_features \
  check_serve
for check in "${checks[@]}"; do run_check "$check"; done
step done
