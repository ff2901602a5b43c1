"""Peak memory and time of the default run (issue 10/17): run whole commands side by side, alternating, and report
for each its peak RSS (the largest of its processes), wall time, user and sys CPU time, and final val loss.

    H="MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736"
    python benchmarks/default_run.py --repeats 2 --variant "heap malloc=$H python train.py configs/tiny_cpu.toml" \\
        --variant "glibc default=python train.py configs/tiny_cpu.toml"
    python benchmarks/default_run.py --variant "run.sh=bash run.sh"

A variant is LABEL=COMMAND, run by bash with `--logging.run_dir=<a fresh temporary directory>` appended (train.py
and run.sh both take it), so every repeat trains from scratch and nothing under out/ is touched. The repeats
alternate between the variants (A B A B ...), so a change in the machine's load hits all of them alike; the table
gives each variant's median. On a shared machine wall time follows the load; user+sys CPU time much less so.
Peak RSS comes from wait4(2): the largest resident set of the command's processes (train.py's, for run.sh).
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time


def run_once(command: str, keep: str | None) -> dict:
    run_dir = tempfile.mkdtemp(prefix="default_run_")
    t0 = time.time()
    proc = subprocess.Popen(["bash", "-c", f"{command} --logging.run_dir={run_dir}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = proc.stdout.read()
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.time() - t0
    rc = os.waitstatus_to_exitcode(status)
    final = os.path.join(run_dir, "final.json")
    summary = json.load(open(final)) if os.path.exists(final) else {}
    sample = os.path.join(run_dir, "sample.txt")
    rec = dict(rc=rc, wall_s=wall, user_s=ru.ru_utime, sys_s=ru.ru_stime, peak_rss_mb=ru.ru_maxrss / 1024,
               val_loss=summary.get("final_val_loss"), train_s=summary.get("elapsed_s"),
               sample=open(sample).read() if os.path.exists(sample) else None)
    if rc != 0:
        sys.stderr.write(out.decode(errors="replace")[-3000:])
    if keep:
        shutil.copytree(run_dir, keep, dirs_exist_ok=True, ignore=shutil.ignore_patterns("ckpt_*"))
    shutil.rmtree(run_dir, ignore_errors=True)
    return rec


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", action="append", required=True, help="LABEL=COMMAND (repeatable)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--json", default=None, help="also write every repeat's numbers to this file")
    p.add_argument("--keep", default=None, help="copy each run's metrics and sample.txt to KEEP/<label>_<repeat>/")
    args = p.parse_args(argv)
    variants = []
    for v in args.variant:
        label, sep, command = v.partition("=")
        if not sep or not command.strip():
            p.error(f"--variant {v!r} is not LABEL=COMMAND")
        variants.append((label, command))
    results = {label: [] for label, _ in variants}
    for r in range(args.repeats):
        for label, command in variants:
            keep = os.path.join(args.keep, f"{label.replace(' ', '_')}_{r}") if args.keep else None
            rec = run_once(command, keep)
            results[label].append(rec)
            print(f"[{r + 1}/{args.repeats}] {label}: rc {rec['rc']} | wall {rec['wall_s']:.1f}s | user "
                  f"{rec['user_s']:.1f}s sys {rec['sys_s']:.1f}s | peak RSS {rec['peak_rss_mb']:.0f} MB | "
                  f"val loss {rec['val_loss']}", flush=True)
    print("\n| variant | runs | wall s | user s | sys s | user+sys s | peak RSS MB | final val loss |\n"
          "|---|---:|---:|---:|---:|---:|---:|---:|")
    for label, recs in results.items():
        med = {k: statistics.median(x[k] for x in recs) for k in ("wall_s", "user_s", "sys_s", "peak_rss_mb")}
        cpu = statistics.median(x["user_s"] + x["sys_s"] for x in recs)
        losses = sorted({f"{x['val_loss']:.4f}" for x in recs if x["val_loss"] is not None}) or ["-"]
        print(f"| {label} | {len(recs)} | {med['wall_s']:.0f} | {med['user_s']:.0f} | {med['sys_s']:.1f} | {cpu:.0f} | "
              f"{med['peak_rss_mb']:,.0f} | {' / '.join(losses)} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0 if all(x["rc"] == 0 for recs in results.values() for x in recs) else 1


if __name__ == "__main__":
    sys.exit(main())
