"""data.prepare's default number of tokenizer processes (issue 17)."""

import os

import data.prepare as P


def test_default_workers_is_one_per_usable_cpu(monkeypatch):
    # issue 17: CPUs - 1 left a 2-core machine on the single-process path
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert P.default_workers() == 2
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert P.default_workers() == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(128)), raising=False)
    assert P.default_workers() == 32
