"""Training is bit-reproducible across processes, whatever the process did before it trained.

Regression test: with two training threads, the shipped ci fixture (seed 0) trained to one of two different
sets of weights (final loss 0.0796 or 0.0974) depending on the process's history, e.g. whether `mechcheck
run` had already started a subprocess to read the git sha. Training now runs single-threaded by default
(`mechcheck.train`), which gave identical weights every time.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from conftest import REPO

SCRIPT = textwrap.dedent("""
    import hashlib, sys
    from pathlib import Path
    import mechcheck.models
    if sys.argv[3] == "unpinned":  # the behaviour before the fix, to show that this test can fail
        mechcheck.models.pin_mkl_threads = lambda: None
    from mechcheck.recipes import build_model
    from mechcheck.runner import RunOptions, Runner, new_report
    from mechcheck.spec import load_claims

    options = RunOptions(cache_dir=sys.argv[1])
    claim = [c for c in load_claims([Path(sys.argv[4]) / "claims"]) if c.id == "lin2024.scratch_first_layer_heads"][0]
    runner = Runner(options)
    if sys.argv[2] == "report":
        new_report(options, [], Path(sys.argv[4]), "cpu")  # versions and git sha (runs git in a subprocess)
    built = build_model(claim.models["scratch"], 0, runner._ctx)
    h = hashlib.sha256()
    for k, v in sorted(built.model.state_dict().items()):
        h.update(v.numpy().tobytes())
    print(h.hexdigest())
""")


def weights_hash(tmp_path, report: bool, pinned: bool = True) -> str:
    cache = tmp_path / ("report" if report else "plain") / ("pinned" if pinned else "unpinned")
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(cache), "report" if report else "plain",
                          "pinned" if pinned else "unpinned", str(REPO)],
                         capture_output=True, text=True, timeout=900, check=True, cwd=REPO)
    return out.stdout.strip().splitlines()[-1]


@pytest.mark.slow
def test_training_does_not_depend_on_what_the_process_did_before(tmp_path):
    """The shipped ci fixture (seed 0) trains to the same bits with and without the report's subprocess."""
    assert weights_hash(tmp_path, report=False) == weights_hash(tmp_path, report=True)
