#!/usr/bin/env bash
# GPU check of the whole training path (one CUDA GPU): every optimizer trains the tiny model through train.py
# (bf16 autocast, checkpoint, resume), then GPT-2 124M training throughput with torch.compile (LionMuon by default; THROUGHPUT_OPTIMIZERS="adamw lionmuon").
# Needs data/shakespeare (python -m data.prepare shakespeare --out data/shakespeare). Prints a table at the end.
#
#   bash benchmarks/gpu_check.sh            # RUNS=<dir> keeps the run directories (default: a temp dir)
#   DEVICE=cpu STEPS=4 bash benchmarks/gpu_check.sh   # a CPU dry run of the same script (no throughput part)
set -uo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-$(mktemp -d)}
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
STEPS=${STEPS:-40}
HALF=$((STEPS / 2))
[ "$DEVICE" = cpu ] || nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c 'import torch; print("torch", torch.__version__)'
TINY=(--train.device=$DEVICE --train.max_steps=$STEPS --train.batch_tokens=16384 --train.micro_batch=32
      --train.eval_interval=$HALF --train.log_interval=$HALF --checkpoint.interval=$HALF)
[ "$DEVICE" = cuda ] || TINY+=(--train.batch_tokens=1024 --train.micro_batch=4 --data.val_tokens=1024)
rows=()
for opt in adamw lion signum muon olion lionmuon signmuon leo; do
  dir=$RUNS/tiny_$opt
  start=$(date +%s.%N)
  # stop halfway, then rerun: the second invocation resumes from the halfway checkpoint on the device
  $PY train.py configs/tiny_cpu.toml --optimizer.name=$opt "${TINY[@]}" --logging.run_dir=$dir \
      --train.stop_after=$HALF > $dir.log 2>&1 && \
  $PY train.py configs/tiny_cpu.toml --optimizer.name=$opt "${TINY[@]}" --logging.run_dir=$dir >> $dir.log 2>&1
  rc=$?
  secs=$($PY -c "import time,sys; print(f'{time.time()-float(sys.argv[1]):.0f}')" $start)
  val=$($PY -c "import json,sys; s=json.load(open(sys.argv[1])); print(f\"{s['final_val_loss']:.4f}\")" $dir/final.json 2>/dev/null || echo "-")
  rows+=("| $opt | $rc | $val | $(grep -c "resumed from step $HALF" $dir.log) | ${secs}s |")
  [ $rc -eq 0 ] || tail -5 $dir.log
done
echo
echo "| optimizer (tiny, $STEPS steps, $DEVICE) | exit | final val loss | resumed | wall |"
echo "|---|---:|---:|---:|---:|"
printf '%s\n' "${rows[@]}"
echo
[ "$DEVICE" = cuda ] || exit 0
# 124M throughput, compiled, LionMuon (AdamW's compiled figure is in benchmarks/RESULTS.md at the same shape)
$PY benchmarks/train_throughput.py --device cuda --size gpt2-124m --micro_batch 16 --block_size 1024 --compile \
    --optimizer ${THROUGHPUT_OPTIMIZERS:-lionmuon} --steps 10 --repeats 3 --warmup 3
