"""Tests of the report renderings: JSON round trip, report.md, figures and the console table."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from mechcheck.report import write_report
from mechcheck.report.console import format_control, format_threshold, one_line, outcome_style, print_summary, render_table
from mechcheck.report.figures import safe_name, write_figures
from mechcheck.report.markdown import render_markdown
from mechcheck.results import SCHEMA_VERSION, CheckResult, ClaimResult, Estimate, ModelRun, RunReport

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SEEDS = [0, 1, 2]
ROLES = ("target", "baseline")
N_LAYERS, N_HEADS = 2, 4
TRACEBACK = 'Traceback (most recent call last):\n  File "x.py", line 1, in <module>\nRuntimeError: secret-trace-marker'


def _role_data(rng: np.random.Generator, fixture: str) -> dict:
    head = [rng.normal(0.0, 0.1, (N_LAYERS, N_HEADS)).round(4).tolist() for _ in SEEDS]
    head[0][1][2] = 0.62  # one dominant head, as a trained induction-like model would show
    return {
        "fixture": fixture,
        "n_layers": N_LAYERS,
        "n_heads": N_HEADS,
        "metric": "accuracy",
        "clean": {"accuracy": [0.99, 0.98, 0.995], "logit_diff": [5.1, 4.8, 5.3]},
        "head_effect": head,
        "layer_effect": [rng.uniform(0.0, 0.8, N_LAYERS).round(4).tolist() for _ in SEEDS],
        "attention": {
            "numbers": [rng.uniform(0.0, 1.0, (N_LAYERS, N_HEADS)).round(4).tolist() for _ in SEEDS],
            "other": [rng.uniform(0.0, 1.0, (N_LAYERS, N_HEADS)).round(4).tolist() for _ in SEEDS],
        },
    }


def make_report() -> RunReport:
    """A hand-built run: one passed claim with head_ablation data for 2 roles x 3 seeds, one error."""
    rng = np.random.default_rng(0)
    passed = ClaimResult(
        id="lin2024/greater-than",
        file="claims/lin2024/greater_than.yaml",
        statement="Heads in layer 1 compute the comparison.",
        outcome="passed",
        reason="all 2 checks passed",
        source={"paper": "Lin et al. 2024", "arxiv": "2401.00001"},
        seeds=list(SEEDS),
        checks=[
            CheckResult(
                name="effect_at_least",
                args={"model": "target", "heads": "top_3", "value": 0.1},
                outcome="passed",
                message="ablating the top 3 heads drops accuracy by 0.142",
                effect=Estimate(0.142, 0.081, 0.203, n=500, n_seeds=3),
                threshold=0.1,
                direction=">=",
                control={"kind": "random", "n_heads": 3, "estimate": 0.012},
            ),
            CheckResult(
                name="effect_at_most",
                args={"model": "baseline", "heads": [[0, 1]], "value": 0.05},
                outcome="passed",
                effect=Estimate(0.004, -0.01, 0.018, n=500, n_seeds=3),
                threshold=0.05,
                direction="<=",
            ),
        ],
        models=[
            ModelRun(role=role, fixture=f"toy-{role}", seed=s, key=f"{role}{s}" + "abcdef0123456789" * 2,
                     recipe="train_toy", cached=bool(s % 2), n_layers=N_LAYERS, n_heads=N_HEADS,
                     info={"steps": 2000, "accuracy": 0.99, "final_loss": 0.0123, "seconds": 4.2})
            for role in ROLES for s in SEEDS
        ],
        experiment={
            "name": "head_ablation",
            "args": {"method": "mean", "metric": "accuracy", "positions": "all"},
            "models": {role: _role_data(rng, f"toy-{role}") for role in ROLES},
        },
        durations={"build": 3.0, "experiment": 1.5, "total": 4.75},
    )
    error = ClaimResult(
        id="lin2024/broken",
        file="claims/lin2024/broken.yaml",
        statement="A claim whose experiment crashed.",
        outcome="error",
        reason="RuntimeError: secret-trace-marker\nsecond line that must not reach the console",
        seeds=list(SEEDS),
        traceback=TRACEBACK,
        durations={"total": 0.2},
    )
    return RunReport(
        run_id="20250101-120000-abcd",
        started="2025-01-01T12:00:00+00:00",
        finished="2025-01-01T12:01:00+00:00",
        profile="ci",
        argv=["mechcheck", "run", "claims/"],
        versions={"mechcheck": "0.1.0", "torch": "2.13.0"},
        git_sha="0123456789abcdef",
        device="cpu",
        threads=4,
        claims=[passed, error],
    )


# --- JSON -----------------------------------------------------------------------------------------


def test_json_round_trip(tmp_path: Path) -> None:
    report = make_report()
    report.write_json(tmp_path / "r.json")
    assert RunReport.read_json(tmp_path / "r.json") == report


def test_schema_version_mismatch_raises(tmp_path: Path) -> None:
    data = make_report().to_dict()
    data["schema_version"] = SCHEMA_VERSION + 1
    path = tmp_path / "r.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="schema version"):
        RunReport.read_json(path)


_finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
_estimates = st.builds(Estimate, estimate=_finite, lo=_finite, hi=_finite, n=st.integers(0, 10**6),
                       n_seeds=st.integers(1, 20), level=st.floats(0.5, 0.999))
_checks = st.builds(
    CheckResult,
    name=st.sampled_from(["effect_at_least", "effect_at_most", "attention_to"]),
    args=st.dictionaries(st.text(min_size=1, max_size=8), st.one_of(st.integers(), _finite, st.text(max_size=8)), max_size=3),
    outcome=st.sampled_from(["passed", "failed", "inconclusive", "error", "skipped"]),
    message=st.text(max_size=30),
    effect=st.none() | _estimates,
    threshold=st.none() | _finite,
    direction=st.sampled_from([">=", "<="]),
    control=st.none() | st.fixed_dictionaries({"kind": st.just("random"), "estimate": _finite}),
)


@settings(max_examples=40, deadline=None)
@given(checks=st.lists(_checks, max_size=4))
def test_json_round_trip_property(checks: list[CheckResult]) -> None:
    report = RunReport(run_id="r", started="s", profile="ci",
                       claims=[ClaimResult(id="c", file="f", statement="s", outcome="passed", checks=checks)])
    assert RunReport.from_dict(json.loads(json.dumps(report.to_dict()))) == report


@settings(max_examples=20, deadline=None)
@given(bad=st.sampled_from([math.nan, math.inf, -math.inf]), good=_finite)
def test_non_finite_floats_become_none(bad: float, good: float) -> None:
    check = CheckResult(name="x", args={}, outcome="inconclusive", effect=Estimate(bad, good, bad, n=1, n_seeds=1))
    report = RunReport(run_id="r", started="s", profile="ci",
                       claims=[ClaimResult(id="c", file="f", statement="s", outcome="inconclusive", checks=[check])])
    text = json.dumps(report.to_dict(), allow_nan=False)  # must be strict JSON
    back = RunReport.from_dict(json.loads(text)).claims[0].checks[0].effect
    assert back is not None and back.estimate is None and back.hi is None and back.lo == good
    # the renderers cope with the None that NaN became
    console = Console(record=True, width=200)
    console.print(render_table(RunReport.from_dict(json.loads(text))))
    assert "—" in console.export_text()


# --- write_report ---------------------------------------------------------------------------------


def test_write_report_files(tmp_path: Path) -> None:
    report = make_report()
    written = write_report(report, tmp_path / "out")
    out = tmp_path / "out"
    assert written["json"] == out / "report.json" and written["json"].is_file()
    assert written["markdown"] == out / "report.md" and written["markdown"].is_file()

    passed, error = report.claims
    expected = {f"figures/lin2024_greater-than__{role}__{kind}.png" for role in ROLES for kind in ("heads", "attention")}
    if len(ROLES) > 1:  # several roles: also the side-by-side comparison with layer profiles
        expected.add("figures/lin2024_greater-than__compare.png")
    assert set(passed.figures) == expected
    assert error.figures == []
    for rel in expected:
        assert written[rel] == out / rel
        assert (out / rel).read_bytes()[:8] == PNG_MAGIC
    assert not list((out / "figures").glob("*.tmp"))

    # the JSON on disk names the figures and reads back equal to the in-memory report
    assert RunReport.read_json(out / "report.json") == report

    md = (out / "report.md").read_text()
    for claim in report.claims:
        assert claim.id in md
    assert "**passed**" in md and "**error**" in md
    for rel in expected:
        assert f"]({rel})" in md
    assert "<details>" in md and "secret-trace-marker" in md and 'File "x.py"' in md
    assert "0.142" in md and "[0.081, 0.203]" in md and "> 0.10" in md and "random 3: 0.012" in md
    assert "`target0abcde`" in md  # cache key cut to 12 characters
    assert "arxiv.org/abs/2401.00001" in md


def test_write_report_without_experiments(tmp_path: Path) -> None:
    report = make_report()
    for claim in report.claims:
        claim.experiment = {}
    report.claims.append(ClaimResult(id="odd", file="f", statement="s", outcome="skipped",
                                     experiment={"name": "head_ablation", "models": {"m": {"head_effect": [[1, 2], [3]]}}}))
    report.claims.append(ClaimResult(id="other", file="f", statement="s", outcome="skipped",
                                     experiment={"name": "not_known_yet", "models": {"m": {}}}))
    with pytest.warns(UserWarning, match="odd"):
        written = write_report(report, tmp_path)
    assert set(written) == {"json", "markdown"}
    assert all(c.figures == [] for c in report.claims)


def test_write_figures_direct(tmp_path: Path) -> None:
    claim = make_report().claims[0]
    del claim.experiment["models"]["target"]["attention"]
    del claim.experiment["models"]["baseline"]["layer_effect"]
    paths = write_figures(claim, tmp_path)
    assert sorted(p.name for p in paths) == sorted([
        "lin2024_greater-than__target__heads.png",
        "lin2024_greater-than__baseline__heads.png",
        "lin2024_greater-than__baseline__attention.png",
        "lin2024_greater-than__compare.png",  # needs only the head effects, which both roles still have
    ])


def test_safe_name() -> None:
    assert safe_name("lin2024/greater than:v2") == "lin2024_greater_than_v2"
    assert safe_name("a.b-c_d") == "a.b-c_d"


# --- console --------------------------------------------------------------------------------------


def test_console_table() -> None:
    report = make_report()
    console = Console(record=True, width=200)
    print_summary(report, console, report_path=Path("reports/x/report.md"))
    text = console.export_text()
    assert "0.142 [0.081, 0.203]" in text and "0.004 [-0.010, 0.018]" in text
    assert "> 0.10" in text and "< 0.05" in text
    assert "random 3: 0.012" in text
    for word in ("passed", "error"):
        assert word in text
    assert "lin2024/greater-than" in text and "lin2024/broken" in text
    # the claim id appears on its first row only
    assert text.count("lin2024/greater-than") == 1
    # the error's reason, first line only; never the traceback
    assert "RuntimeError: secret-trace-marker" in text
    assert "second line" not in text and "Traceback" not in text and 'File "x.py"' not in text
    assert "1 passed" in text and "1 error" in text and "reports/x/report.md" in text


def test_render_table_rows_and_styles() -> None:
    table = render_table(make_report())
    assert table.row_count == 3  # two checks + one reason row
    assert outcome_style("passed") == "bold green" and outcome_style("failed") == "bold red"
    assert "yellow" in outcome_style("inconclusive") and "magenta" in outcome_style("error")
    assert outcome_style("skipped") == "dim" and outcome_style("unknown") == ""


def test_formatters() -> None:
    check = CheckResult(name="x", args={}, outcome="passed", threshold=0.005, direction="<=")
    assert format_threshold(check) == "< 0.005"
    assert format_threshold(CheckResult(name="x", args={}, outcome="passed")) == "—"
    assert format_control({"kind": "chance", "estimate": {"estimate": 0.5, "lo": 0.4}}) == "chance: 0.500"
    assert format_control(None) == "—"
    assert one_line("a\n  b", 80) == "a"
    assert len(one_line("x" * 200, 80)) == 80


def test_markdown_without_claims() -> None:
    md = render_markdown(RunReport(run_id="empty", started="s", profile="ci"))
    assert "`empty`" in md and "No claims were run." in md


def test_console_table_compact_on_narrow_terminals() -> None:
    report = make_report()
    console = Console(record=True, width=80)
    print_summary(report, console)
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    for claim in report.claims:
        assert claim.id[:20] in text.replace("\n", "")
        for check in claim.checks:
            assert check.name in text and str(check.effect.estimate)[:4] in text
    assert "control" not in text  # dropped in compact mode; report.md has it


def _two_accuracy_checks() -> RunReport:
    """A claim whose two `accuracy_at_least` checks differ only by role: one passed, one failed."""
    def acc(role: str, outcome: str, estimate: float) -> CheckResult:
        return CheckResult(name="accuracy_at_least", args={"model": role, "value": 0.9}, outcome=outcome,
                           effect=Estimate(estimate, estimate - 0.02, estimate + 0.02, n=500, n_seeds=3),
                           threshold=0.9, direction=">=")

    layers = CheckResult(name="top_heads_in_layers", outcome="failed", threshold=0.66, direction=">=",
                         args={"model": "finetuned", "top": 3, "layers": [4, 5, 6, 7, 8, 9, 10, 11],
                               "at_least": 0.66, "metric": "logit_diff"},
                         effect=Estimate(0.5, 0.4, 0.6, n=500, n_seeds=3))
    claim = ClaimResult(id="lin2024.minilm_finetuned_vs_scratch", file="c.yaml", statement="s", outcome="failed",
                        seeds=[0, 1, 2], checks=[acc("scratch", "passed", 0.95), acc("finetuned", "failed", 0.55),
                                                 layers])
    return RunReport(run_id="r", started="s", profile="ci", claims=[claim])


def test_console_rows_of_one_check_kind_are_told_apart_at_80_columns() -> None:
    report = _two_accuracy_checks()
    console = Console(record=True, width=80)
    print_summary(report, console)
    lines = console.export_text().splitlines()
    assert max(len(line) for line in lines) <= 80
    cells = [line.split("│")[1].strip() for line in lines if line.startswith("│")]
    joined = "\n".join(cells)
    # each row names its role: the passed and the failed check no longer read the same
    first, second = (i for i, c in enumerate(cells) if c.startswith("accuracy_at_least"))
    assert "model=scratch" in cells[first] + " " + cells[first + 1]
    assert "model=finetuned" in cells[second] + " " + cells[second + 1]
    passed = next(line for line in lines if "accuracy_at_least" in line)
    assert "passed" in passed
    # arguments are whole or absent; a cut is marked
    allowed = {"model=scratch", "model=finetuned", "value=0.9", "top=3", "layers=[4,5,6,7,8,9,10,11]",
               "at_least=0.66", "metric=logit_diff", "…", "accuracy_at_least", "top_heads_in_layers"}
    tokens = [t for c in cells[first:] for t in c.split()]  # (the claim id above may fold: it is one word)
    assert set(tokens) <= allowed, set(tokens) - allowed
    assert "…" in joined  # the top_heads_in_layers row does not fit in two lines of this width


def test_check_labels_put_what_differs_first_and_cut_whole_arguments() -> None:
    from mechcheck.report.console import check_labels

    checks = _two_accuracy_checks().claims[0].checks
    full = check_labels(checks)
    assert full[:2] == ["accuracy_at_least model=scratch value=0.9", "accuracy_at_least model=finetuned value=0.9"]
    # the role, then what is not alike across the claim
    assert full[2] == "top_heads_in_layers model=finetuned top=3 layers=[4,5,6,7,8,9,10,11] at_least=0.66 " \
                      "metric=logit_diff"
    assert check_labels(checks, 40)[2] == "top_heads_in_layers model=finetuned …"
    assert check_labels(checks, 30)[1] == "accuracy_at_least …"
    # an argument shared by every check goes last: here `value`, once both checks share the role too
    same_role = [CheckResult(name="effect_at_least", args={"model": "m", "heads": h, "value": 0.1}, outcome="passed")
                 for h in ("top_1", "top_3")]
    assert check_labels(same_role) == ["effect_at_least heads=top_1 model=m value=0.1",
                                       "effect_at_least heads=top_3 model=m value=0.1"]
    assert check_labels(same_role, 30, max_lines=2) == ["effect_at_least heads=top_1\n  model=m value=0.1",
                                                        "effect_at_least heads=top_3\n  model=m value=0.1"]
