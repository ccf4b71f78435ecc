"""End to end: the shipped Lin 2024 claim files, run by the CLI in a subprocess against tiny stand-ins of
their fixtures (same names, same recipes and chain: pretrain -> fine-tune, and the scratch twin), so the
claim files, the fixture graph, the fixed-seed pretrained model, the checks and the report are exercised
together in about a minute."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import REPO, write
from test_cli import cli, no_traceback, show

TINY_FIXTURES = {
    "fixtures/tasks/cdm-words.yaml": """
name: cdm-words
generator: cdm
args: {vocab: words, max_number: 9, min_gap: 1}
""",
    "fixtures/tasks/generic-corpus.yaml": """
name: generic-corpus
generator: corpus
args: {max_number: 9, seq_len: 16}
""",
    "fixtures/models/lm-pretrained.yaml": """
name: lm-pretrained
recipe: pretrain
seed: 0
architecture: {n_layer: 2, n_head: 2, n_embd: 64}
task: generic-corpus
train: {steps: 60, batch_size: 32, lr: 3.0e-3, loss: lm}
""",
    "fixtures/models/cdm-finetuned.yaml": """
name: cdm-finetuned
recipe: finetune
from: lm-pretrained
task: cdm-words
train: {steps: 200, batch_size: 64, lr: 2.0e-3, warmup_steps: 20}
""",
    "fixtures/models/cdm-scratch.yaml": """
name: cdm-scratch
recipe: scratch
architecture: {n_layer: 2, n_head: 2, n_embd: 64, vocab_size: 30, n_positions: 18}
task: cdm-words
train: {steps: 200, batch_size: 64, lr: 2.0e-3, warmup_steps: 20}
""",
}
CLAIMS = ("both_models_solve_task.yaml", "finetuned_later_layers.yaml")


@pytest.mark.slow
def test_shipped_lin_claims_run_end_to_end(tmp_path):
    root = tmp_path / "proj"
    for rel, text in TINY_FIXTURES.items():
        write(root, rel, text)
    for name in CLAIMS:
        (root / "claims").mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / "claims" / "lin2024" / name, root / "claims" / name)
    cache = tmp_path / "cache"
    r = cli(["run", "claims/", "--seeds", "2", "--report-dir", "out", "--n-boot", "200"], root, cache,
            MECHCHECK_THREADS="1")
    no_traceback(r)
    assert r.returncode in (0, 1), show(r)  # tiny models may fail the claims; nothing may be an error
    (run,) = [p for p in (root / "out").iterdir() if p.is_dir()]
    report = json.loads((run / "report.json").read_text())
    claims = {c["id"]: c for c in report["claims"]}
    assert set(claims) == {"lin2024.both_models_solve_task", "lin2024.finetuned_later_layers"}
    for c in claims.values():
        assert c["outcome"] in ("passed", "failed", "inconclusive"), (c["id"], c["reason"])
        for check in c["checks"]:
            if check["name"] == "layer_centroid_higher":
                continue  # a statistic per replicate: below
            e = check["effect"]
            assert e and e["n"] == 1000 and None not in (e["lo"], e["hi"]), check["message"]
            assert e["lo"] <= e["estimate"] <= e["hi"], check["message"]

    ablation = claims["lin2024.finetuned_later_layers"]
    centroid = ablation["checks"][-1]
    assert centroid["name"] == "layer_centroid_higher"
    assert set(centroid["details"]["layer_profile"]) == {"finetuned", "scratch"}
    details = centroid["details"]
    for role, values in details["centroids"].items():  # one per seed, unless no head matters in that seed
        assert len(values) + details["replicates_without_profile"][role] == 2
    e = centroid["effect"]
    if e is None or e["insufficient"]:  # a tiny model may have no significant head in a seed: no interval then
        assert centroid["outcome"] == "inconclusive", centroid["message"]
    else:
        assert e["lo"] <= e["estimate"] <= e["hi"] and len(e["replicates"]) >= 2, centroid["message"]
    assert any(f.endswith("__compare.png") for f in ablation["figures"])

    # two fine-tuned replicates, two scratch replicates, each with its own weights; the pretrained parent
    # has a fixed seed, so both fine-tunes start from one checkpoint (trained once: one cache entry)
    models = ablation["models"]
    assert sorted((m["role"], m["seed"]) for m in models) == [("finetuned", 0), ("finetuned", 1),
                                                             ("scratch", 0), ("scratch", 1)]
    assert len({m["info"]["weights_sha256"] for m in models}) == 4
    entries = [json.loads(p.read_text()) for p in (cache / "models").rglob("mechcheck.json")]
    pretrained = [e for e in entries if e.get("payload", {}).get("recipe") == "pretrain"]
    assert len(pretrained) == 1, [e.get("payload", {}).get("recipe") for e in entries]
