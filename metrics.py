"""Run metrics: `RUN_DIR/metrics.jsonl` always, Weights & Biases optionally.

metrics.jsonl is the source of truth (plot.py and sweep.py read only it, so plotting never needs a
network). One JSON object per line, strict JSON (a non-finite float such as a NaN loss is written as
`null`), every record stamped with `"time"` (unix seconds):

    {"kind": "config", "config": {...resolved config...}, "code": {commit, dirty, diff_hash}}  # the first line
    {"kind": "train", "step", "loss", "lr", "grad_norm", "tokens", "model_flops",
     "optimizer_flops", "total_flops", "elapsed_s", "tokens_per_s", "time"}        # one per log step
    {"kind": "eval", "step", "val_loss", "tokens", "model_flops", "optimizer_flops",
     "total_flops", "elapsed_s", "time"}                                           # one per eval
    {"kind": "resume", "step", "time"[, "config"][, "code"]}   # a resumed run continues after `step`;
                                     # "config" / "code" only when the resumed config / code differs
    {"kind": "summary", ...final.json fields..., "time"}                           # written by finish()

Counters (tokens, *_flops, elapsed_s) are cumulative since step 0, also across resumes. Extra keys
passed to log_train/log_eval (e.g. "mfu") are kept as they are.

Resume: MetricsLogger(..., resume_step=S) atomically rewrites the file keeping only records with
step <= S (and drops a truncated last line left by a crash mid-write), so a resumed run never shows
a step twice. Without resume_step a new run starts a fresh file (an old one is kept as
metrics.jsonl.old).

wandb (`logging.wandb = "disabled" | "offline" | "online"`) is imported lazily and is never allowed to
break or stall a run: if it is not installed, or init/log fails (no API key, no network), we warn once
and keep writing metrics.jsonl only. "online" without an API key (WANDB_API_KEY or a ~/.netrc entry)
falls back to "offline" with a warning; "online" whose init fails (e.g. no network) also retries
offline so the run can still be uploaded later with `wandb sync RUN_DIR/wandb/offline-run-*`.
init is bounded by `wandb.Settings(init_timeout=...)` and the final upload by `finish_timeout`.
The API key is only ever read to check that one exists; it is never logged or written.
"""

import dataclasses
import json
import math
import netrc
import os
import time
import uuid
import warnings
from urllib.parse import urlparse

from atomic import atomic_write
from errors import ConfigError

METRICS_FILE = "metrics.jsonl"
WANDB_ID_FILE = "wandb_run_id.txt"  # so a resumed run continues the same wandb run
WANDB_MODES = ("disabled", "offline", "online")
WANDB_INIT_TIMEOUT_S = 30.0    # wandb's default is 90 s; a run should not wait that long for a dashboard
WANDB_FINISH_TIMEOUT_S = 120.0  # cap the final upload; the offline copy in RUN_DIR/wandb stays syncable

TRAIN_KEYS = ("step", "loss", "lr", "grad_norm", "tokens", "model_flops", "optimizer_flops",
              "total_flops", "elapsed_s", "tokens_per_s")
EVAL_KEYS = ("step", "val_loss", "tokens", "model_flops", "optimizer_flops", "total_flops", "elapsed_s")
# Logged with every wandb record, so any of them can be picked as a chart's x axis.
X_AXES = ("step", "tokens", "total_flops", "elapsed_s")
# wandb names for the metrics; the x-axis counters above keep their own names.
_WANDB_NAMES = {"loss": "train/loss", "lr": "train/lr", "grad_norm": "train/grad_norm",
                "tokens_per_s": "train/tokens_per_s", "val_loss": "val/loss",
                "model_flops": "model_flops", "optimizer_flops": "optimizer_flops"}


def _jsonable(x):
    """json.dumps `default=`: numpy/torch scalars via .item(), paths/enums via str()."""
    if hasattr(x, "item"):
        return x.item()
    return str(x)


def _finite(x):
    """Replace non-finite floats (NaN/inf loss on a bad step) by None so the file stays strict JSON."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def dumps_record(record):
    """One metrics.jsonl line (without the newline)."""
    # Convert numpy/torch scalars first so _finite sees plain floats.
    plain = json.loads(json.dumps(record, default=_jsonable))
    return json.dumps(_finite(plain), allow_nan=False)


def read_records(path):
    """Parse a metrics.jsonl file into a list of dicts.

    Tolerant on purpose, because a crash can happen mid-write: an unparsable or incomplete last
    line is dropped silently; an unparsable line elsewhere is dropped with a warning.
    Returns [] for a missing file.
    """
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        lines = f.read().decode("utf-8", errors="replace").split("\n")
    records = []
    for i, line in enumerate(lines):
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            rec = None
        if not isinstance(rec, dict):
            # The last non-empty line of a crashed run is routinely cut off; anything else is odd.
            if any(l.strip() for l in lines[i + 1:]):
                warnings.warn(f"{path}:{i + 1}: skipping a malformed line")
            continue
        records.append(rec)
    return records


def _have_wandb_api_key():
    """True if wandb can authenticate without prompting: WANDB_API_KEY or a netrc entry."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    try:
        auth = netrc.netrc(os.environ.get("NETRC")).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(auth and auth[2])


def code_version(root: str | None = None) -> dict:
    """The code that produced a run: {"commit": the checkout's git HEAD, "dirty": uncommitted changes to tracked
    files, "diff_hash": blake2b-64 of `git diff HEAD` ("" when clean)}, or {"commit": None} outside a git checkout.
    Recorded in metrics.jsonl, config.toml, checkpoints and final.json, so results can be traced to their code."""
    import hashlib
    import subprocess

    root = root or os.path.dirname(os.path.abspath(__file__))
    try:
        def git(*args):
            return subprocess.run(["git", *args], cwd=root, capture_output=True, timeout=30, check=True).stdout

        commit = git("rev-parse", "HEAD").decode().strip()
        diff = git("diff", "HEAD")
    except (OSError, subprocess.SubprocessError):
        return {"commit": None}
    return {"commit": commit, "dirty": bool(diff), "diff_hash": hashlib.blake2b(diff, digest_size=8).hexdigest()
            if diff else ""}


class MetricsLogger:
    """Writes metrics.jsonl (and mirrors to wandb when asked). See the module docstring for the schema.

    enabled=False (non-master DDP ranks) makes every method a no-op and touches no file.
    """

    def __init__(self, run_dir, config, wandb_mode="disabled", project="nanoptim", run_name="", group="",
                 enabled=True, resume_step=None, code=None):
        self.enabled = enabled
        self.code = code  # code_version() of this invocation, recorded in the config (or resume) line
        self._wandb = None  # the wandb Run, when wandb is live
        self._warned = set()
        if not enabled:
            return
        if wandb_mode not in WANDB_MODES:
            raise ConfigError(f"logging.wandb={wandb_mode!r} is not a wandb mode. "
                              f"Use one of {', '.join(WANDB_MODES)}")
        if dataclasses.is_dataclass(config) and not isinstance(config, type):
            config = dataclasses.asdict(config)
        self.run_dir = str(run_dir)
        self.path = os.path.join(self.run_dir, METRICS_FILE)
        os.makedirs(self.run_dir, exist_ok=True)
        config = json.loads(dumps_record(config))  # what we log is exactly what the file holds
        if resume_step is None:
            self._start_fresh(config)
        else:
            self._truncate_for_resume(int(resume_step), config)
        self._file = open(self.path, "a")  # open for the whole run, closed in finish()
        if wandb_mode != "disabled":
            self._init_wandb(wandb_mode, project, run_name or os.path.basename(os.path.abspath(self.run_dir)),
                             group, config, resumed=resume_step is not None)

    # ---- metrics.jsonl ----

    def _start_fresh(self, config):
        if os.path.exists(self.path):
            # Keep the old history rather than silently destroying it (e.g. resume="never" into a used dir).
            os.replace(self.path, self.path + ".old")
            warnings.warn(f"{self.path} existed and this is a fresh run: moved it to {METRICS_FILE}.old")
        with open(self.path, "w") as f:
            f.write(dumps_record(self._config_line(config)) + "\n")

    def _config_line(self, config):
        return {"kind": "config", "config": config, **({"code": self.code} if self.code else {}), "time": _now()}

    def _truncate_for_resume(self, resume_step, config):
        """Keep config + records with step <= resume_step, rewritten atomically, then note the resume."""
        old = read_records(self.path)
        if not old:
            warnings.warn(f"{self.path} is missing or empty: the history before step {resume_step + 1} is lost; "
                          f"the checkpoint's counters carry on, and new records follow a resume line")
        head = [r for r in old[:1] if r.get("kind") == "config"]
        if not head:  # file missing or damaged at the top: the config line must still come first
            head = [self._config_line(config)]
        keep = [r for r in old[len(head) if old[:1] == head else 0:]
                if r.get("kind") != "config" and isinstance(r.get("step"), int) and r["step"] <= resume_step]
        resume = {"kind": "resume", "step": resume_step, "time": _now()}
        if head[0].get("config") != config:
            resume["config"] = config
        if self.code and head[0].get("code") != self.code:
            resume["code"] = self.code
        atomic_write(self.path, lambda f: f.write("".join(dumps_record(r) + "\n" for r in head + keep + [resume])
                                                  .encode()))

    def _write(self, record):
        self._file.write(dumps_record(record) + "\n")
        self._file.flush()  # a crash loses at most the line being written; read_records skips it

    def _record(self, kind, metrics, required):
        missing = [k for k in required if k not in metrics]
        if missing:  # a caller bug, not user input
            raise ValueError(f"{kind} record is missing {missing}")
        rec = {"kind": kind}
        rec.update({k: metrics[k] for k in required})
        rec.update({k: v for k, v in metrics.items() if k not in rec})
        rec["time"] = _now()
        return rec

    def log_train(self, metrics):
        """Append a train record; `metrics` must hold TRAIN_KEYS (extra keys are kept)."""
        if not self.enabled:
            return
        rec = self._record("train", metrics, TRAIN_KEYS)
        self._write(rec)
        self._wandb_log(rec)

    def log_eval(self, metrics):
        """Append an eval record; `metrics` must hold EVAL_KEYS (extra keys are kept)."""
        if not self.enabled:
            return
        rec = self._record("eval", metrics, EVAL_KEYS)
        self._write(rec)
        self._wandb_log(rec)

    def finish(self, summary=None):
        """Append a summary record (the final.json fields), close the file and the wandb run.

        final.json itself is written by train.py (atomic.atomic_write) as the run's completion marker.
        """
        if not self.enabled:
            return
        if summary is not None:
            self._write({"kind": "summary", **summary, "time": _now()})
        self._file.close()
        self.enabled = False  # further calls are no-ops rather than writes to a closed file
        if self._wandb is not None:
            run, self._wandb = self._wandb, None
            try:
                if summary:
                    run.summary.update(json.loads(dumps_record(summary)))
                run.finish()
            except Exception as e:  # wandb must never fail a finished run
                self._warn_once("finish", f"wandb finish failed ({type(e).__name__}: {e}); "
                                          f"metrics.jsonl is complete")

    # ---- wandb ----

    def _warn_once(self, key, msg):
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(msg)

    def _init_wandb(self, mode, project, run_name, group, config, resumed):
        try:
            import wandb
        except ImportError:
            self._warn_once("import", f"logging.wandb={mode} but wandb is not installed; "
                                      f"logging to {METRICS_FILE} only (pip install wandb to enable)")
            return
        if mode == "online" and not _have_wandb_api_key():
            self._warn_once("key", "logging.wandb=online but no wandb API key (WANDB_API_KEY or `wandb login`); "
                                   "logging offline instead (upload later with `wandb sync`)")
            mode = "offline"
        run_id = self._wandb_run_id(resumed)
        modes = [mode] if mode == "offline" else ["online", "offline"]
        for m in modes:
            try:
                settings = wandb.Settings(init_timeout=WANDB_INIT_TIMEOUT_S, finish_timeout=WANDB_FINISH_TIMEOUT_S,
                                          console="off")  # console capture is redundant with our logs
                run = wandb.init(project=project, name=run_name, group=group or None, config=config,
                                 dir=self.run_dir, id=run_id, resume="allow", mode=m, settings=settings)
                # Every record carries all X_AXES, so the UI can plot against any of them;
                # FLOPs is the default x because loss-vs-FLOPs is what this repo compares.
                for x in X_AXES:
                    run.define_metric(x)
                run.define_metric("train/*", step_metric="total_flops")
                run.define_metric("val/*", step_metric="total_flops", summary="min")
                self._wandb = run
                return
            except Exception as e:  # any wandb failure (timeout, auth, network) is non-fatal
                nxt = "retrying offline" if m == "online" else f"logging to {METRICS_FILE} only"
                warnings.warn(f"wandb init ({m}) failed ({type(e).__name__}: {e}); {nxt}")

    def _wandb_run_id(self, resumed):
        """A resumed run reuses its wandb id (stored in the run dir); a fresh run gets a new one."""
        path = os.path.join(self.run_dir, WANDB_ID_FILE)
        if resumed and os.path.exists(path):
            with open(path) as f:
                run_id = f.read().strip()
            if run_id:
                return run_id
        run_id = uuid.uuid4().hex[:12]
        with open(path, "w") as f:
            f.write(run_id + "\n")
        return run_id

    def _wandb_log(self, rec):
        if self._wandb is None:
            return
        data = {}
        for k, v in rec.items():
            if k in ("kind", "time") or not isinstance(v, (int, float)) or isinstance(v, bool):
                continue
            if k in X_AXES:
                data[k] = v
            else:
                data[_WANDB_NAMES.get(k, f"{'val' if rec['kind'] == 'eval' else 'train'}/{k}")] = v
        try:
            self._wandb.log(data)
        except Exception as e:
            self._warn_once("log", f"wandb log failed ({type(e).__name__}: {e}); "
                                   f"continuing with {METRICS_FILE} only")
            self._wandb = None


def _now():
    return round(time.time(), 3)
