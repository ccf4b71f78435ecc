"""Builds across processes: a SIGKILLed build resumes to the bits of an uninterrupted one, and two processes
building the same fixture on one cache train it once (the second waits for the first, then reads its entry).

Each builder is a real `python` process calling `fixtures.build_model` with a `BuildContext`, as `mechcheck
run` and pytest-xdist workers do.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import REPO, write
from mechcheck.cache import ModelCache

BUILD = textwrap.dedent("""
    import json, os, sys
    from pathlib import Path
    from rich.console import Console
    from mechcheck.cache import ModelCache
    from mechcheck.recipes import BuildContext, build_model
    from mechcheck.spec import load_model_fixture

    cache, fixtures, name, together = sys.argv[1:5]
    spec = load_model_fixture(name, Path(fixtures))
    ctx = BuildContext(ModelCache(cache), console=Console(stderr=True, width=200))
    if together == "together":
        print("ready", flush=True)
        sys.stdin.readline()  # the test starts every builder at the same moment
    built = build_model(spec, 0, ctx)
    print(json.dumps({"pid": os.getpid(), "key": built.key, "cached": built.cached,
                      "weights": built.info["weights_sha256"],
                      "resumed_from_step": built.info.get("resumed_from_step")}), flush=True)
""")


@pytest.fixture
def fixtures_dir(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    write(root, "fixtures/tasks/cdm9.yaml", """
        name: cdm9
        generator: cdm
        args: {vocab: words, max_number: 9}
    """)
    # long enough (a few seconds with a save after every step) for the test to kill it midway
    write(root, "fixtures/models/long-cdm.yaml", """
        name: long-cdm
        recipe: scratch
        architecture: {n_layer: 1, n_head: 2, n_embd: 16}
        task: cdm9
        train: {steps: 400, batch_size: 16, lr: 3.0e-3, eval_every: 50}
    """)
    write(root, "fixtures/models/short-cdm.yaml", """
        name: short-cdm
        recipe: scratch
        architecture: {n_layer: 2, n_head: 2, n_embd: 32}
        task: cdm9
        train: {steps: 60, batch_size: 32, lr: 3.0e-3, eval_every: 20}
    """)
    return root / "fixtures"


def _start(cache: Path, fixtures: Path, name: str, together: bool = False, **env: str) -> subprocess.Popen:
    environ = {k: v for k, v in os.environ.items() if k != "MECHCHECK_CHECKPOINT_EVERY"}
    environ.update(env, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen([sys.executable, "-c", BUILD, str(cache), str(fixtures), name,
                             "together" if together else "now"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=environ, cwd=REPO)


def _result(proc: subprocess.Popen, stdin: str | None = None) -> tuple[dict, str]:
    out, err = proc.communicate(stdin, timeout=600)
    assert proc.returncode == 0, f"builder failed ({proc.returncode}):\n{err}"
    return json.loads(out.strip().splitlines()[-1]), err


def _temporaries(cache: Path) -> list[Path]:
    return [p for p in cache.rglob("*") if p.name.startswith(".")]


@pytest.mark.slow
def test_a_killed_build_resumes_to_the_bits_of_an_uninterrupted_build(fixtures_dir, tmp_path):
    cache = tmp_path / "cache"
    proc = _start(cache, fixtures_dir, "long-cdm", MECHCHECK_CHECKPOINT_EVERY="0")  # a save after every step
    try:
        deadline = time.monotonic() + 300
        while not list((cache / "partial").glob("*/step-*")):
            assert proc.poll() is None, f"the builder ended before saving any state:\n{proc.communicate()[1]}"
            assert time.monotonic() < deadline, "no training state appeared within 300 s"
            time.sleep(0.01)
        time.sleep(0.5)  # a few more steps (and saves): the kill may well land inside one
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not list((cache / "models").rglob("mechcheck.json")), "it finished before the kill: make long-cdm longer"

    rerun, err = _result(_start(cache, fixtures_dir, "long-cdm"))
    assert not rerun["cached"] and rerun["resumed_from_step"] > 0, err
    assert f"resuming from step {rerun['resumed_from_step']} of 400" in err

    fresh, _ = _result(_start(tmp_path / "fresh-cache", fixtures_dir, "long-cdm"))
    assert fresh["resumed_from_step"] == 0
    assert rerun["key"] == fresh["key"] and rerun["weights"] == fresh["weights"]
    assert not (cache / "partial" / rerun["key"]).exists(), "the state is deleted once the model is stored"
    assert _temporaries(cache) == []


@pytest.mark.slow
def test_two_processes_building_one_fixture_train_it_once(fixtures_dir, tmp_path):
    cache = tmp_path / "cache"
    builders = [_start(cache, fixtures_dir, "short-cdm", together=True) for _ in range(2)]
    try:
        for b in builders:
            assert b.stdout.readline().strip() == "ready", b.communicate()[1]
        for b in builders:  # release both at once
            b.stdin.write("go\n")
            b.stdin.flush()
        (a, err_a), (b, err_b) = [_result(p) for p in builders]
    finally:
        for p in builders:
            if p.poll() is None:
                p.kill()
                p.communicate(timeout=60)

    assert a["key"] == b["key"] and a["weights"] == b["weights"]
    trained, waited = (a, b) if not a["cached"] else (b, a)
    assert not trained["cached"] and waited["cached"], "both processes trained the same fixture"
    err_waited = err_b if waited is b else err_a
    assert f"waiting for process {trained['pid']} on " in err_waited, err_waited
    assert "which is building scratch short-cdm (seed 0)" in err_waited

    key = a["key"]
    assert ModelCache(cache).get(key) is not None
    assert [p.name for p in (cache / "models").rglob("mechcheck.json")] == ["mechcheck.json"]
    assert _temporaries(cache) == [], "temporary directories were left behind"
    assert not (cache / "partial" / key).exists()
    assert [p.name for p in (cache / "locks").iterdir()] == [f"{key}.lock"]
