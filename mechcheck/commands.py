"""The subcommands around a run: compare, baseline, export (CI regression) and schema, new (authoring).

`mechcheck.cli` parses the arguments and dispatches; these functions take the parsed arguments and return the
exit code (invalid input is raised as `SpecError`, which the dispatcher prints and turns into exit 2).
"""

from __future__ import annotations

import sys
from pathlib import Path

from mechcheck.errors import SpecError

def _read_report(path: Path):
    """A report or baseline file (or a run directory holding report.json); unreadable: exit 2."""
    from mechcheck.results import RunReport

    path = Path(path)
    if path.is_dir():
        path = path / "report.json"
    try:
        return RunReport.read_json(path)
    except FileNotFoundError:
        raise SpecError("no such report", file=str(path)) from None
    except (ValueError, TypeError, KeyError) as exc:  # bad JSON, another schema version, missing fields
        raise SpecError(f"not a mechcheck report: {exc}", file=str(path)) from None


def _compare(old, new, tolerance, console, out_dir: Path | None):
    from mechcheck.compare import compare_reports
    from mechcheck.report.diff import print_comparison, write_comparison

    try:
        comparison = compare_reports(old, new, tolerance)
    except ValueError as exc:
        raise SpecError(str(exc), file="<command line>", field_path="--tolerance") from exc
    print_comparison(comparison, console)
    if out_dir is not None:
        write_comparison(comparison, out_dir)
    return comparison


def _cmd_compare(args) -> int:
    from rich.console import Console

    old, new = _read_report(args.old), _read_report(args.new)
    out = Console() if sys.stdout.isatty() else Console(width=180)
    comparison = _compare(old, new, args.tolerance, out, args.out)
    return 1 if comparison.regressed else 0


def _cmd_baseline(args) -> int:
    from mechcheck.baseline import DEFAULT_DIR, latest_report, update_readme, write_baseline

    try:
        source = args.source or latest_report(args.report_dir, args.profile)
    except FileNotFoundError as exc:
        raise SpecError(str(exc), file=str(args.report_dir)) from None
    report = _read_report(source)
    if report.profile != args.profile:
        raise SpecError(f"run {report.run_id} is of profile {report.profile!r}, not {args.profile!r}", file=str(source))
    out = args.out or DEFAULT_DIR / f"{args.profile}.json"
    try:
        base = write_baseline(report, out)
    except ValueError as exc:
        raise SpecError(str(exc), file=str(source)) from None
    print(f"baseline {out}: {len(base.claims)} claims from run {report.run_id} ({out.stat().st_size / 1024:.0f} KB)")
    if args.readme.is_file() and update_readme(args.readme, base):
        print(f"{args.readme}: outcome table regenerated")
    return 0


def _cmd_export(args) -> int:
    from rich.console import Console

    from mechcheck.cache import ModelCache
    from mechcheck.export import export_fixture
    from mechcheck.models import choose_device, pin_mkl_threads
    from mechcheck.recipes import BuildContext
    from mechcheck.spec import load_model_fixture

    fixtures = args.fixtures_dir or Path("fixtures")
    if not fixtures.is_dir():
        raise SpecError("no fixtures/ directory here (name one with --fixtures-dir DIR)", file=str(fixtures))
    spec = load_model_fixture(args.fixture, fixtures, args.profile)
    if args.seed < 0:
        raise SpecError("--seed must be at least 0", file="<command line>")
    pin_mkl_threads()
    ctx = BuildContext(ModelCache(args.cache_dir), choose_device("cpu"), Console(stderr=True), 1)
    try:
        meta = export_fixture(spec, args.out, args.seed, ctx, force=args.force)
    except (FileExistsError, ValueError) as exc:
        raise SpecError(str(exc), file="<command line>") from None
    except Exception as exc:  # noqa: BLE001 - building failed: say why in one line
        print(f"error: could not build {args.fixture}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 3
    print(f"exported {args.fixture} replicate {meta['replicate']} to {args.out} (weights sha256 "
          f"{(meta['weights_sha256'] or '?')[:12]}…; vocabulary: {meta['vocabulary'] or 'none'})")
    return 0


def _cmd_schema(args) -> int:
    import json

    from mechcheck.authoring import json_schema

    text = json.dumps(json_schema(args.kind), indent=2) + "\n"
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text, encoding="utf-8")
        print(f"wrote {args.output} ({args.kind} files)")
    return 0


def _cmd_new(args) -> int:
    from mechcheck.authoring import skeleton
    from mechcheck.skeleton import claim_id_for
    from mechcheck.spec import find_fixtures_dir

    if args.path.exists() and not args.force:
        raise SpecError(f"{args.path} exists; pass --force to overwrite it", file="<command line>")
    fixtures = args.fixtures_dir or find_fixtures_dir(args.path.absolute().parent)
    text = skeleton(args.experiment, fixtures, claim_id_for(args.path), schema=args.schema)
    args.path.parent.mkdir(parents=True, exist_ok=True)
    args.path.write_text(text, encoding="utf-8")
    print(f"wrote {args.path} (experiment {args.experiment}; fixtures: {fixtures or 'none found, placeholders'})")
    return 0
