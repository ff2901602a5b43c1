"""metrics.jsonl schema, resume truncation, and the wandb paths (disabled / missing / failing / offline)."""

import json
import os
import sys
import types
import warnings

import pytest

from errors import ConfigError
from metrics import EVAL_KEYS, TRAIN_KEYS, MetricsLogger, read_records

CONFIG = {"model": {"arch": "gpt2", "size": "tiny"}, "optimizer": {"name": "lionmuon", "lr": 0.02},
          "logging": {"run_name": "r1", "wandb": "disabled"}}


def train_rec(step, loss=3.0):
    return dict(step=step, loss=loss, lr=1e-3, grad_norm=0.5, tokens=1024 * step, model_flops=6000 * step,
                optimizer_flops=100 * step, total_flops=6100 * step, elapsed_s=0.25 * step, tokens_per_s=4096.0)


def eval_rec(step, val_loss=2.5):
    return dict(step=step, val_loss=val_loss, tokens=1024 * step, model_flops=6000 * step,
                optimizer_flops=100 * step, total_flops=6100 * step, elapsed_s=0.25 * step)


def strict_lines(path):
    """Parse every line as strict JSON (NaN/Infinity are rejected)."""
    def no_nan(s):
        raise AssertionError(f"non-strict JSON constant {s}")
    with open(path) as f:
        return [json.loads(line, parse_constant=no_nan) for line in f]


def write_run(run_dir, steps, resume_step=None, wandb_mode="disabled", **kw):
    lg = MetricsLogger(run_dir, CONFIG, wandb_mode=wandb_mode, resume_step=resume_step, **kw)
    for s in steps:
        lg.log_train(train_rec(s))
        if s % 2 == 0:
            lg.log_eval(eval_rec(s, val_loss=3.0 - 0.1 * s))
    return lg


def test_schema(tmp_path):
    lg = write_run(tmp_path, range(3))
    lg.log_train({**train_rec(3, loss=float("nan")), "mfu": 0.4})  # a skipped non-finite step, and an extra key
    lg.finish({"steps": 4, "best_val_loss": 2.8})
    recs = strict_lines(tmp_path / "metrics.jsonl")
    assert recs[0]["kind"] == "config" and recs[0]["config"] == CONFIG
    kinds = [r["kind"] for r in recs]
    assert kinds == ["config", "train", "eval", "train", "train", "eval", "train", "summary"]
    for r in recs:
        if r["kind"] == "train":
            assert set(r) == {"kind", "time", *TRAIN_KEYS} | ({"mfu"} if r["step"] == 3 else set())
        if r["kind"] == "eval":
            assert set(r) == {"kind", "time", *EVAL_KEYS}
        assert isinstance(r["time"], float)
    assert recs[6]["loss"] is None and recs[6]["mfu"] == 0.4  # NaN -> null keeps the file strict JSON
    assert recs[5]["val_loss"] == pytest.approx(2.8) and recs[5]["total_flops"] == 6100 * 2
    assert recs[-1]["best_val_loss"] == 2.8


def test_missing_key_is_a_bug(tmp_path):
    lg = MetricsLogger(tmp_path, CONFIG)
    bad = train_rec(0)
    del bad["grad_norm"]
    with pytest.raises(ValueError, match="grad_norm"):
        lg.log_train(bad)


def test_disabled_rank_touches_nothing(tmp_path):
    lg = MetricsLogger(tmp_path / "run", CONFIG, wandb_mode="online", enabled=False)
    lg.log_train(train_rec(0))
    lg.log_eval(eval_rec(0))
    lg.finish({"steps": 1})
    assert not (tmp_path / "run").exists()


def test_bad_wandb_mode(tmp_path):
    with pytest.raises(ConfigError, match="logging.wandb"):
        MetricsLogger(tmp_path, CONFIG, wandb_mode="on")


def test_resume_truncates_atomically(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write_run(tmp_path, range(7))._file.close()  # "crash" after step 6 ...
    with open(path, "a") as f:
        f.write('{"kind": "train", "step": 7, "lo')  # ... in the middle of writing step 7
    lg = write_run(tmp_path, range(5, 9), resume_step=4)  # checkpoint was at step 4
    lg.finish()
    recs = strict_lines(path)
    assert recs[0]["kind"] == "config" and sum(r["kind"] == "config" for r in recs) == 1
    for kind in ("train", "eval"):
        steps = [r["step"] for r in recs if r["kind"] == kind]
        assert len(steps) == len(set(steps)), f"duplicated {kind} steps {steps}"
        assert steps == sorted(steps)
    assert [r["step"] for r in recs if r["kind"] == "train"] == list(range(9))
    assert [r["step"] for r in recs if r["kind"] == "eval"] == [0, 2, 4, 6, 8]
    (resume,) = [r for r in recs if r["kind"] == "resume"]
    assert resume["step"] == 4 and "config" not in resume  # same config: not repeated


def test_resume_with_changed_config_records_it(tmp_path):
    write_run(tmp_path, range(2)).finish()
    new = {**CONFIG, "train": {"max_steps": 100}}
    MetricsLogger(tmp_path, new, resume_step=1).finish()
    recs = read_records(tmp_path / "metrics.jsonl")
    assert recs[0]["config"] == CONFIG  # the first line stays the run's original config
    assert recs[-1]["kind"] == "resume" and recs[-1]["config"] == new


def test_fresh_run_keeps_old_file(tmp_path):
    write_run(tmp_path, range(3)).finish()
    with pytest.warns(UserWarning, match="metrics.jsonl.old"):
        write_run(tmp_path, range(1)).finish()
    assert len(read_records(tmp_path / "metrics.jsonl.old")) > len(read_records(tmp_path / "metrics.jsonl"))
    assert [r["kind"] for r in read_records(tmp_path / "metrics.jsonl")] == ["config", "train", "eval"]


def test_read_records_tolerates_truncation(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text('{"kind": "config", "config": {}}\n{"kind": "train", "step": 0}\n{"kind": "tr')
    assert [r["kind"] for r in read_records(p)] == ["config", "train"]
    p.write_text('{"kind": "config", "config": {}}\nGARBAGE\n{"kind": "train", "step": 0}\n')
    with pytest.warns(UserWarning, match=":2"):
        assert [r["kind"] for r in read_records(p)] == ["config", "train"]


def test_atomic_write_leaves_old_file_on_error(tmp_path):
    from atomic import atomic_write

    path = str(tmp_path / "final.json")
    atomic_write(path, lambda f: f.write(b'{"steps": 3}'))
    with pytest.raises(RuntimeError):
        atomic_write(path, lambda f: (f.write(b'{"st'), (_ for _ in ()).throw(RuntimeError("disk"))))
    assert json.loads(open(path).read()) == {"steps": 3}  # the old content, whole
    assert os.listdir(tmp_path) == ["final.json"]  # no temporary file left


# ---- wandb ----

class FakeWandb(types.ModuleType):
    """Stands in for the wandb package: records calls, can fail init/log on demand."""

    def __init__(self, fail_init_modes=(), fail_log=False):
        super().__init__("wandb")
        self.inits, self.logged, self.defined, self.finished, self.summary = [], [], [], 0, {}
        self.fail_init_modes, self.fail_log = fail_init_modes, fail_log
        fake = self

        class Settings:
            def __init__(self, **kw):
                self.kw = kw

        class Run:
            summary = fake.summary

            def define_metric(self, name, **kw):
                fake.defined.append((name, kw))

            def log(self, data):
                if fake.fail_log:
                    raise ConnectionError("network down")
                fake.logged.append(data)

            def finish(self):
                fake.finished += 1

        self.Settings, self._Run = Settings, Run

    def init(self, **kw):
        self.inits.append(kw)
        if kw["mode"] in self.fail_init_modes:
            raise TimeoutError("init timed out")
        return self._Run()


@pytest.fixture
def no_key(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))


def test_wandb_disabled_never_imports(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # any `import wandb` would raise ImportError
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write_run(tmp_path, range(2)).finish({"steps": 2})
    assert len(read_records(tmp_path / "metrics.jsonl")) == 5


@pytest.mark.parametrize("mode", ["offline", "online"])
def test_wandb_not_installed(tmp_path, monkeypatch, mode):
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.warns(UserWarning, match="not installed") as rec:
        write_run(tmp_path, range(3), wandb_mode=mode).finish({"steps": 3})
    assert len([w for w in rec if "wandb" in str(w.message)]) == 1  # warned once, not per record
    assert [r["kind"] for r in read_records(tmp_path / "metrics.jsonl")][-1] == "summary"


def test_wandb_online_without_key_goes_offline(tmp_path, monkeypatch, no_key):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    with pytest.warns(UserWarning, match="no wandb API key"):
        lg = write_run(tmp_path, range(3), wandb_mode="online", project="p", run_name="lr1e-3", group="sweep_a")
    lg.finish({"steps": 3, "best_val_loss": 2.8})
    (init,) = fake.inits
    assert init["mode"] == "offline" and init["name"] == "lr1e-3" and init["group"] == "sweep_a"
    assert init["project"] == "p" and init["config"] == CONFIG and init["dir"] == str(tmp_path)
    assert init["settings"].kw["init_timeout"] <= 60  # bounded: a run never waits long for wandb
    names = {n for n, _ in fake.defined}
    assert {"tokens", "total_flops", "elapsed_s", "step"} <= names
    assert len(fake.logged) == 5 and fake.logged[0]["train/loss"] == 3.0 and fake.logged[1]["val/loss"] == 3.0
    assert all({"tokens", "total_flops", "elapsed_s", "step"} <= set(d) for d in fake.logged)
    assert fake.finished == 1 and fake.summary["best_val_loss"] == 2.8


def test_wandb_online_with_key(tmp_path, monkeypatch):
    secret = "0123456789abcdef-secret-key"
    monkeypatch.setenv("WANDB_API_KEY", secret)
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    write_run(tmp_path, range(2), wandb_mode="online").finish({"steps": 2})
    assert [i["mode"] for i in fake.inits] == ["online"]
    for root, _, files in os.walk(tmp_path):  # the key must not end up in anything we write
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                assert secret.encode() not in f.read()
    assert secret not in json.dumps(fake.inits[0]["config"])


def test_wandb_online_init_failure_retries_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "k")
    fake = FakeWandb(fail_init_modes=("online",))
    monkeypatch.setitem(sys.modules, "wandb", fake)
    with pytest.warns(UserWarning, match="retrying offline"):
        write_run(tmp_path, range(2), wandb_mode="online").finish()
    assert [i["mode"] for i in fake.inits] == ["online", "offline"] and len(fake.logged) == 3


def test_wandb_init_and_log_failures_are_not_fatal(tmp_path, monkeypatch, no_key):
    fake = FakeWandb(fail_init_modes=("offline",))
    monkeypatch.setitem(sys.modules, "wandb", fake)
    with pytest.warns(UserWarning, match="metrics.jsonl only"):
        write_run(tmp_path, range(3), wandb_mode="offline").finish()
    assert len(read_records(tmp_path / "metrics.jsonl")) == 6

    fake = FakeWandb(fail_log=True)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    with pytest.warns(UserWarning, match="wandb log failed") as rec:
        write_run(tmp_path / "b", range(3), wandb_mode="offline").finish()
    assert len([w for w in rec if "wandb log failed" in str(w.message)]) == 1
    assert len(read_records(tmp_path / "b" / "metrics.jsonl")) == 6


def test_wandb_resume_reuses_run_id(tmp_path, monkeypatch, no_key):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    write_run(tmp_path, range(3), wandb_mode="offline").finish()
    write_run(tmp_path, range(3, 5), wandb_mode="offline", resume_step=2).finish()
    write_run(tmp_path / "other", range(1), wandb_mode="offline").finish()
    ids = [i["id"] for i in fake.inits]
    assert ids[0] == ids[1] != ids[2] and all(i["resume"] == "allow" for i in fake.inits)


@pytest.mark.slow
def test_real_wandb_offline_without_network(tmp_path, monkeypatch, no_key):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # any network attempt would fail fast
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    write_run(tmp_path, range(3), wandb_mode="offline", run_name="t").finish({"steps": 3})
    offline = [d for d in os.listdir(tmp_path / "wandb") if d.startswith("offline-run-")]
    assert len(offline) == 1
    assert any(f.endswith(".wandb") for f in os.listdir(tmp_path / "wandb" / offline[0]))
    assert [r["kind"] for r in read_records(tmp_path / "metrics.jsonl")][-1] == "summary"


def test_resume_with_the_history_deleted_warns(tmp_path):
    """metrics.jsonl deleted beside a checkpoint: the resume says the history is lost instead of starting silently."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with pytest.warns(UserWarning, match="missing or empty: the history before step 6 is lost"):
        lg = MetricsLogger(str(run_dir), CONFIG, resume_step=5)
    lg.finish(None)
    kinds = [r["kind"] for r in read_records(run_dir / "metrics.jsonl")]
    assert kinds[:2] == ["config", "resume"]
