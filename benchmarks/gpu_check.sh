#!/usr/bin/env bash
# GPU check of the whole training path (one CUDA GPU): every optimizer trains the tiny model through train.py
# (bf16 autocast, checkpoint, resume), then GPT-2 124M training throughput with torch.compile (LionMuon by default; THROUGHPUT_OPTIMIZERS="adamw lionmuon").
# Needs data/shakespeare (python -m data.prepare shakespeare --out data/shakespeare). Prints a table at the end.
#
#   bash benchmarks/gpu_check.sh            # RUNS=<dir> keeps the run directories (default: a temp dir)
set -uo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-$(mktemp -d)}
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c 'import torch; print("torch", torch.__version__)'
TINY=(--train.device=cuda --train.max_steps=40 --train.batch_tokens=16384 --train.micro_batch=32
      --train.eval_interval=20 --train.log_interval=20 --checkpoint.interval=20)
rows=()
for opt in adamw lion signum muon olion lionmuon signmuon leo; do
  dir=$RUNS/tiny_$opt
  start=$(date +%s.%N)
  # stop after 20 steps, then rerun: the second invocation resumes from the step-20 checkpoint on the GPU
  $PY train.py configs/tiny_cpu.toml --optimizer.name=$opt "${TINY[@]}" --logging.run_dir=$dir \
      --train.stop_after=20 > $dir.log 2>&1 && \
  $PY train.py configs/tiny_cpu.toml --optimizer.name=$opt "${TINY[@]}" --logging.run_dir=$dir >> $dir.log 2>&1
  rc=$?
  secs=$($PY -c "import time,sys; print(f'{time.time()-float(sys.argv[1]):.0f}')" $start)
  val=$($PY -c "import json,sys; s=json.load(open(sys.argv[1])); print(f\"{s['final_val_loss']:.4f}\")" $dir/final.json 2>/dev/null || echo "-")
  rows+=("| $opt | $rc | $val | $(grep -c 'resumed from step 20' $dir.log) | ${secs}s |")
  [ $rc -eq 0 ] || tail -5 $dir.log
done
echo
echo "| optimizer (tiny, 40 steps × 16384 tokens, CUDA bf16) | exit | final val loss | resumed | wall |"
echo "|---|---:|---:|---:|---:|"
printf '%s\n' "${rows[@]}"
echo
# 124M throughput, compiled, LionMuon (AdamW's compiled figure is in benchmarks/RESULTS.md at the same shape)
$PY benchmarks/train_throughput.py --device cuda --size gpt2-124m --micro_batch 16 --block_size 1024 --compile \
    --optimizer ${THROUGHPUT_OPTIMIZERS:-lionmuon} --steps 10 --repeats 3 --warmup 3
