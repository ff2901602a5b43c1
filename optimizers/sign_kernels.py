"""One pass over memory for the sign-based elementwise steps on CPU: sign_kernels.c, compiled on first use.

Torch runs Lion's update as seven separate passes (decay, multiply, add, sign, update, multiply, add), each reading
and writing whole tensors; the C loops of sign_kernels.c do the same arithmetic per element in one pass (20 bytes
per element instead of ~68), bit for bit equal to the torch ops they replace (the rounding rules are in the .c
file; tests/test_fused_steps.py checks every step against the torch code). The optimizers call

    rest = sign_kernels.lion_step(params, grads, exp_avgs, lr, wd, beta1, beta2)

which steps every (p, g, m) it can take — fp32, contiguous, on CPU — and returns the others as lists, for the torch
code to step (CUDA tensors, other dtypes, non-contiguous gradients, and everything when there is no kernel).

Building: `cc -O3 -march=native -ffp-contract=off` (CC overrides cc) into the cache directory
$NANOPTIM_CACHE or ~/.cache/nanoptim, keyed by the source, the flags, the compiler and this CPU's model and flags,
so a shared home directory serves different machines; concurrent ranks build to temporary names and rename. Well
under a second. Without a C compiler, or with NANOPTIM_CPU_KERNELS=0, the torch code runs (same results, slower).
`status()` says which, and why.
"""

import contextlib
import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor

import torch

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sign_kernels.c")
FLAGS = ["-O3", "-march=native", "-ffp-contract=off", "-fno-math-errno", "-fPIC", "-shared"]
MIN_PARALLEL = 1 << 16  # elements below which threads cost more than they save

_lib = None
_status = None
_pool = None
_torch_only = False  # torch_ops_only(): benchmarks time the torch path in the same process


def _cpu_id() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            lines = [ln for ln in f if ln.startswith(("model name", "flags"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor() + platform.machine()


def _build() -> ctypes.CDLL:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        raise RuntimeError("no C compiler (cc/gcc/clang, or CC) found")
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout.split("\n")[0]
    with open(SOURCE, "rb") as f:
        source = f.read()
    key = hashlib.sha256(b"\0".join([source, " ".join(FLAGS).encode(), version.encode(), _cpu_id().encode()]))
    cache = os.environ.get("NANOPTIM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "nanoptim")
    os.makedirs(cache, exist_ok=True)
    lib = os.path.join(cache, f"sign_kernels-{key.hexdigest()[:16]}.so")
    if not os.path.exists(lib):
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache)
        os.close(fd)
        try:
            proc = subprocess.run([cc, *FLAGS, SOURCE, "-o", tmp, "-lm"], capture_output=True, text=True, timeout=120)
            if proc.returncode != 0:
                raise RuntimeError(f"{cc} failed: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
            os.replace(tmp, lib)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    dll = ctypes.CDLL(lib)
    f, i64, ptr, i32 = ctypes.c_float, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
    common = [i64, ptr, ptr, ptr, f, f, i32]  # n, p, g, m, lr, decay, apply_decay
    for name, extra in (("lion_step", [f, f, f, f]), ("signum_step", [f]), ("dual_ema_sign_step", [f, f])):
        getattr(dll, name).argtypes = common + extra
        getattr(dll, name).restype = None
    return dll


def _library():
    global _lib, _status
    if _status is None:
        if os.environ.get("NANOPTIM_CPU_KERNELS", "1").strip() in ("0", "false", "False", "off"):
            _status = "off (NANOPTIM_CPU_KERNELS=0): torch ops"
        else:
            try:
                _lib = _build()
                _status = "one-pass C kernels (sign_kernels.c)"
            except Exception as e:  # no compiler, a read-only cache, ...: the torch code gives the same result
                _status = f"unavailable ({e}): torch ops"
    return _lib


def status() -> str:
    """How the sign steps run on CPU: the C kernels, or the torch ops and why."""
    _library()
    return _status


def available() -> bool:
    return _library() is not None


@contextlib.contextmanager
def torch_ops_only():
    """Within it, the sign steps run the torch ops (what runs without a compiler): for side-by-side timing."""
    global _torch_only
    before, _torch_only = _torch_only, True
    try:
        yield
    finally:
        _torch_only = before


def _threads() -> int:
    return torch.get_num_threads()


PLAIN = (torch.Tensor, torch.nn.Parameter)  # not a tensor subclass (DTensor: sharded_ns steps its local shards)


def _takes(p, g, m) -> bool:
    return (type(p) in PLAIN and type(g) in PLAIN and type(m) in PLAIN
            and p.device.type == "cpu" and p.dtype == g.dtype == m.dtype == torch.float32
            and p.is_contiguous() and g.is_contiguous() and m.is_contiguous())


def _run(fn, params, grads, bufs, scalars):
    """Step every triple the kernel takes, split into equal element ranges over torch's intra-op threads;
    return the rest as (params, grads, bufs) lists."""
    lib = _library() if params and not _torch_only else None
    if lib is None:
        return params, grads, bufs
    take, rest = [], ([], [], [])
    for t in zip(params, grads, bufs):
        if _takes(*t):
            take.append(t)
        else:
            for lst, x in zip(rest, t):
                lst.append(x)
    kernel = getattr(lib, fn)
    total = sum(p.numel() for p, _, _ in take)
    threads = max(1, min(_threads(), total // MIN_PARALLEL))
    per = -(-total // threads)
    segments = [[] for _ in range(threads)]  # (n, p, g, m) pointers of each thread's share
    start = 0  # index in the concatenation of all taken tensors
    for p, g, m in take:
        n, lo = p.numel(), 0
        while lo < n:
            t = (start + lo) // per
            hi = min(n, (t + 1) * per - start)
            segments[t].append((hi - lo, *(x.data_ptr() + 4 * lo for x in (p, g, m))))
            lo = hi
        start += n

    def work(segs):
        for seg in segs:
            kernel(*seg, *scalars)

    if threads == 1:
        work(segments[0])
    else:
        global _pool
        if _pool is None or _pool._max_workers < threads:
            _pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="sign_kernels")
        for f in [_pool.submit(work, s) for s in segments]:
            f.result()
    return rest


def lion_step(params, grads, exp_avgs, lr, wd, beta1, beta2):
    """Lion (optimizers/lion.py lion_update) on what the kernel takes; returns the rest."""
    return _run("lion_step", params, grads, exp_avgs,
                (lr, 1.0 - lr * wd, int(wd != 0), beta1, 1.0 - beta1, beta2, 1.0 - beta2))


def signum_step(params, grads, exp_avgs, lr, wd, momentum):
    """Signum (optimizers/signum.py) on what the kernel takes; returns the rest."""
    return _run("signum_step", params, grads, exp_avgs, (lr, 1.0 - lr * wd, int(wd != 0), 1.0 - momentum))


def dual_ema_sign_step(params, grads, bufs, lr, wd, beta1, beta2):
    """LionMuon/SignMuon's Lion step (optimizers/lionmuon.py) on what the kernel takes; returns the rest."""
    return _run("dual_ema_sign_step", params, grads, bufs, (lr, 1.0 - lr * wd, int(wd != 0), beta1, 1.0 - beta2))
