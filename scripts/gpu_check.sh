#!/usr/bin/env bash
# Every figure only a CUDA host can give, in one go (~6 min on one H100/H200):
#   compare   the same frames encoded on the CPU (float32) and the GPU (bf16), token by token
#   train     train + evaluate the demo on the GPU (bf16 autocast, TF32), closed loop included
#   resume    the CUDA resume test (resume = an uninterrupted run, dropout draws included)
#   torchrun  50 training steps under torchrun (NCCL, one process)
#   bench     training steps/s, X-Trainer config, batch 16 and 64 (eager, bf16 autocast);
#             the feature stage against its bare encoder and the disk's write rate (ViT-B-16,
#             16x the demo episodes); the policy's control step (p50, p99)
#   compile   demo training with train.compile=reduce-overhead (CUDA graphs; graph breaks counted)
# Needs the demo's data/demo and outputs/prepare, outputs/geometry.zarr (`dvc repro geometry`)
# and the project importable. Usage: scripts/gpu_check.sh OUT_DIR [check ...]  (default: all)
set -uo pipefail
out=${1:?usage: scripts/gpu_check.sh OUT_DIR [compare|train|resume|torchrun|bench|compile ...]}
shift
checks=${*:-compare train resume torchrun bench compile}
mkdir -p "$out"
hsa() { python3 -m hsa_pipeline.cli "$@"; }
step() { echo; echo "=== $* ($(date +%T))"; }
timed() { local label=$1 t0=$SECONDS; shift; "$@"; echo "$label: $((SECONDS - t0)) s"; }
ensure_features() { [ -e outputs/features.zarr ] || hsa features --set features.workers=8 > "$out/features_gpu.log" 2>&1; }

step environment
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch, open_clip, zarr; print('torch', torch.__version__, 'open_clip', open_clip.__version__, 'zarr', zarr.__version__, torch.cuda.get_device_name())"
echo "$(nproc) CPU cores"

for check in $checks; do case $check in
compare)
  step "features: CPU float32 vs GPU bf16"
  hsa features --set features.device=cpu --set features.workers=8 > "$out/features_cpu.log" 2>&1 && tail -1 "$out/features_cpu.log"
  rm -rf /tmp/features_cpu.zarr && mv outputs/features.zarr /tmp/features_cpu.zarr
  timed "features on cuda" hsa features --set features.workers=8 > "$out/features_gpu.log" 2>&1; tail -2 "$out/features_gpu.log"
  python3 benchmarks/compare_features.py /tmp/features_cpu.zarr outputs/features.zarr | tee "$out/compare_features.txt" ;;
train)
  step "train + evaluate the demo on the GPU"
  ensure_features
  timed "train on cuda" hsa train > "$out/train.log" 2>&1; tail -4 "$out/train.log"
  timed "evaluate (closed loop on cuda)" hsa evaluate --set eval.rollouts=50 > "$out/evaluate.log" 2>&1; tail -3 "$out/evaluate.log"
  cp outputs/train/metrics.json "$out/train_metrics.json"; cp outputs/eval/metrics.json "$out/eval_metrics.json"
  cp outputs/train/run/curves/train.tsv "$out/train_curve.tsv" ;;
resume)
  step "resume on CUDA equals an uninterrupted run"
  python3 -m pytest -q tests/test_train.py -k cuda 2>&1 | tail -3 | tee "$out/resume_cuda.txt" ;;
torchrun)
  step "torchrun, NCCL, 1 process, 50 steps"
  ensure_features
  timed torchrun torchrun --standalone --nproc_per_node=1 -m stages.train > "$out/train_torchrun.log" 2>&1
  tail -3 "$out/train_torchrun.log" ;;
bench)
  step "training benchmark (X-Trainer config), batch 16 and 64"
  python3 benchmarks/bench_train.py --device cuda --steps 50 | tee "$out/bench_train_b16.txt"
  python3 benchmarks/bench_train.py --device cuda --steps 50 --batch 64 --sides cached | tee "$out/bench_train_b64.txt"
  step "control step: ViT-B-16 on 3 cameras + 1 tactile, X-Trainer ACT"
  python3 benchmarks/bench_policy.py --device cuda --steps 200 | tee "$out/bench_policy.txt"
  step "feature stage vs bare encoder, ViT-B-16, 16x the demo episodes"
  mkdir -p /tmp/big && cp -r outputs/prepare /tmp/prepare_demo
  for i in $(seq -w 1 16); do for f in data/demo/episodes/*.hdf5; do ln -sf "$PWD/$f" "/tmp/big/r${i}_$(basename "$f")"; done; done
  hsa prepare --set synth.enabled=false --set data.episodes_dir=/tmp/big > "$out/prepare_big.log" 2>&1; tail -1 "$out/prepare_big.log"
  dd if=/dev/zero of=/tmp/ddtest bs=64M count=32 oflag=direct 2>&1 | tail -1 | tee "$out/disk_write.txt"; rm -f /tmp/ddtest
  python3 benchmarks/bench_features.py --set features.model=ViT-B-16 --set features.batch_size=256 \
    --set features.workers=12 2>&1 | grep -v "img/s\]" | tee "$out/bench_features.txt"
  rm -rf outputs/prepare && mv /tmp/prepare_demo outputs/prepare ;;
compile)
  step "torch.compile(mode=reduce-overhead), 300 steps"
  ensure_features
  TORCH_LOGS=graph_breaks timed "compiled train" hsa train --set train.compile=reduce-overhead --set train.steps=300 \
    --set train.resume=false > "$out/train_compile.log" 2>&1
  echo "graph breaks: $(grep -c 'Graph break' "$out/train_compile.log")"; tail -3 "$out/train_compile.log" ;;
*) echo "unknown check '$check'; expected compare, train, resume, torchrun, bench or compile" >&2; exit 2 ;;
esac; done
step done
