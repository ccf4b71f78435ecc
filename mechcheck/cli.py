"""The `mechcheck` command: run | validate | ls | schema | new.

Exit codes: 0 every claim passed; 1 at least one claim did not pass (failed, inconclusive or skipped) and none
ended as error; 3 at least one claim ended as error (the harness or the set-up broke: a missing checkpoint,
a crash); 2 invalid input (a claim or fixture file, or an argument) — printed as one line per problem, no
traceback; 130 interrupted (the report written so far is kept, unfinished claims marked interrupted).
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path

from mechcheck.errors import SpecError, SpecErrors

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mechcheck", description="pytest for mechanistic hypotheses")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="validate, then run claims and write a report")
    run.add_argument("paths", nargs="+", help="claim files or directories of them")
    run.add_argument("--profile", default="ci", help="profile to run (ci: CPU-sized; paper: the published setting)")
    run.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    run.add_argument("--cache-dir", type=Path, default=None,
                     help="where trained models are cached (default $MECHCHECK_CACHE_DIR or ~/.cache/mechcheck)")
    run.add_argument("--report-dir", type=Path, default=Path("reports"), help="reports go to REPORT_DIR/<run id>/")
    run.add_argument("--fixtures-dir", type=Path, default=None,
                     help="fixtures directory (default: the nearest fixtures/ above each claim)")
    run.add_argument("--seeds", type=int, default=None, help="override every claim's number of seeds")
    run.add_argument("--workers", type=int, default=None,
                     help="worker processes for training and measuring (default $MECHCHECK_WORKERS or the number "
                          "of cores; 1 runs everything in this process)")
    run.add_argument("--threads", type=int, default=None,
                     help="torch threads per worker while measuring (default $MECHCHECK_THREADS or 1: the same "
                          "bits whatever the number of workers)")
    run.add_argument("--train-threads", type=int, default=1,
                     help="torch threads while training (default 1: trained models are bit-identical across "
                          "runs; 2 trains about 1.75x faster on 2 cores but not bit-reproducibly)")
    run.add_argument("--n-boot", type=int, default=200,
                     help="resamples of the within-replicate bootstraps behind per-replicate statistics")

    val = sub.add_parser("validate", help="check claim and fixture files without touching a model")
    val.add_argument("paths", nargs="+")
    val.add_argument("--profile", default="ci")
    val.add_argument("--fixtures-dir", type=Path, default=None)

    ls = sub.add_parser("ls", help="list claims, fixtures, experiments, checks, tasks and recipes")
    ls.add_argument("paths", nargs="*", default=[], help="claim files or directories (default: claims/ if present)")
    ls.add_argument("--profile", default="ci")
    ls.add_argument("--fixtures-dir", type=Path, default=None)

    # authoring aids (mechcheck.authoring): the JSON Schema for editors, and claim skeletons
    sch = sub.add_parser("schema", help="print the JSON Schema of claim and fixture files (for YAML editors)")
    sch.add_argument("--kind", choices=("claim", "model", "task", "all"), default="all",
                     help="which files it describes (all: claims and fixtures, told apart by recipe / generator)")
    sch.add_argument("-o", "--output", type=Path, default=None, help="write it to this file instead of stdout")
    new = sub.add_parser("new", help="write a commented claim skeleton for an experiment")
    new.add_argument("path", type=Path, help="the claim file to write")
    new.add_argument("--experiment", required=True, help="a registered experiment (`mechcheck ls` lists them)")
    new.add_argument("--force", action="store_true", help="overwrite an existing file")
    new.add_argument("--fixtures-dir", type=Path, default=None,
                     help="fixtures to name (default: the nearest fixtures/ above PATH)")
    new.add_argument("--schema", default=None, help="path or URL of the schema file, written as the editor modeline")
    return p


def _load(paths, profile: str, fixtures_dir: Path | None):
    from mechcheck.spec import load_claims

    try:
        return load_claims([Path(p) for p in paths], profile=profile, fixtures_dir=fixtures_dir)
    except SpecErrors as exc:
        for e in exc.errors:
            if e.file is None and e.field_path == "profile":  # it came from --profile
                e.file = "<command line>"
        raise


def _print_errors(exc: SpecErrors | SpecError) -> None:
    errors = exc.errors if isinstance(exc, SpecErrors) else [exc]
    errors = sorted(errors, key=lambda e: (e.file or "", e.line or 0))  # read top to bottom, file by file
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    print(f"{len(errors)} problem{'s' if len(errors) != 1 else ''} found; nothing was run.", file=sys.stderr)


def _cmd_validate(args) -> int:
    claims = _load(args.paths, args.profile, args.fixtures_dir)
    print(f"ok: {len(claims)} claim{'s' if len(claims) != 1 else ''} valid (profile {args.profile})")
    return 0


def exit_code(report) -> int:
    """0 all passed; 3 some claim ended as error; 1 otherwise (failed, inconclusive, skipped)."""
    if report.ok:
        return 0
    return 3 if any(c.outcome == "error" for c in report.claims) else 1


def _cmd_run(args) -> int:
    from rich.console import Console

    from mechcheck.progress import WorkProgress
    from mechcheck.report import write_report
    from mechcheck.report.console import outcome_style, print_summary
    from mechcheck.runner import RunOptions, Runner, default_threads, new_report, pending_result

    for flag in ("seeds", "workers", "threads"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise SpecError(f"--{flag} must be at least 1", file="<command line>")
    claims = _load(args.paths, args.profile, args.fixtures_dir)  # the whole suite validates before anything runs
    if not claims:
        raise SpecError("no claim files found", file=" ".join(args.paths))
    console = Console(stderr=True)
    options = RunOptions(profile=args.profile, device=args.device, cache_dir=args.cache_dir,
                         threads=args.threads or default_threads(), train_threads=args.train_threads,
                         seeds=args.seeds, workers=args.workers, n_boot=args.n_boot, console=console)
    try:
        runner = Runner(options)
    except ValueError as exc:
        raise SpecError(str(exc), file="<command line>") from exc
    report = new_report(options, sys.argv, Path.cwd(), runner.device, runner.workers)
    report.cache_dir = str(runner.build.cache.root)
    out_dir = args.report_dir / report.run_id
    # every claim is in the report from the start, as interrupted until judged: a run that is killed leaves a
    # report that says which claims it finished and which it did not
    report.claims = [pending_result(c) for c in claims]
    report.write_json(out_dir / "report.json")
    console.print(f"mechcheck: {len(claims)} claim(s), profile [bold]{args.profile}[/], device {runner.device}, "
                  f"{runner.workers} worker(s), cache {report.cache_dir}")
    judged = iter(range(len(claims)))
    progress = WorkProgress(console)

    def on_result(result) -> None:
        report.claims[next(judged)] = result
        report.write_json(out_dir / "report.json")  # after every claim: a run that dies keeps what it did
        style = outcome_style(result.outcome)
        line = f"  [{style}]{result.outcome:>12}[/]  {result.id}  ({result.durations.get('total', 0):.0f} s)"
        (progress.progress.console if progress.live else console).print(line)
        if result.outcome in ("error", "skipped") and result.reason:
            # the table cuts reasons to 80 chars (and shows none for a check's error): print it whole, once
            progress._say(f"  {'':>12}  {result.reason}")

    runner.on_result = on_result
    runner.on_event = progress.event
    try:
        with progress:
            runner.run_claims(claims)
    except KeyboardInterrupt:
        runner.close(cancel=True)
        report.finished = datetime.now(timezone.utc).isoformat(timespec="seconds")
        report.write_json(out_dir / "report.json")
        console.print(f"interrupted; partial report in {out_dir / 'report.json'} (a model in training saved "
                      "its state: the next run resumes it)")
        return 130
    finally:
        runner.close()
    report.finished = datetime.now(timezone.utc).isoformat(timespec="seconds")
    paths = write_report(report, out_dir)
    # Wide enough for every column when stdout is a file or a CI log (rich would assume 80).
    out = Console() if sys.stdout.isatty() else Console(width=180)
    print_summary(report, out, report_path=paths.get("markdown"))
    return exit_code(report)


def _cmd_ls(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from mechcheck.registry import CHECKS, EXPERIMENTS, FIGURES, RECIPES, TASKS, UNITS
    from mechcheck.spec import find_fixtures_dir, list_fixtures

    console = Console() if sys.stdout.isatty() else Console(width=180)  # as in run: no "…" in logs
    paths = args.paths or (["claims"] if Path("claims").is_dir() else [])
    if paths:
        claims = _load(paths, args.profile, args.fixtures_dir)
        t = Table(title=f"claims (profile {args.profile})")
        for col in ("id", "models", "experiment", "checks", "seeds", "file"):
            t.add_column(col)
        for c in claims:
            t.add_row(c.id, ", ".join(f"{r}={m.name}" for r, m in c.models.items()), c.experiment.name,
                      ", ".join(x.name for x in c.expect), str(c.seeds), c.file)
        console.print(t)
    fixtures_dir = args.fixtures_dir or (find_fixtures_dir(Path(paths[0]).resolve()) if paths else None)
    if fixtures_dir is None and Path("fixtures").is_dir():
        fixtures_dir = Path("fixtures")
    if fixtures_dir:
        found = list_fixtures(fixtures_dir)
        t = Table(title=f"fixtures ({fixtures_dir})")
        t.add_column("kind")
        t.add_column("names")
        for kind, names in found.items():
            t.add_row(kind, ", ".join(names))
        console.print(t)
    for registry in (EXPERIMENTS, UNITS, CHECKS, TASKS, RECIPES, FIGURES):
        t = Table(title=f"{registry.kind}s")
        t.add_column("name")
        t.add_column("parameters")
        t.add_column("what it does")
        for name in registry.names():
            e = registry.get(name)
            params = ", ".join(p.name + ("*" if p.required else f"={p.default}") for p in e.params)
            t.add_row(name, params, e.doc)
        console.print(t)
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


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `mechcheck` console script."""
    args = _parser().parse_args(argv)
    try:
        return {"run": _cmd_run, "validate": _cmd_validate, "ls": _cmd_ls, "schema": _cmd_schema,
                "new": _cmd_new}[args.command](args)
    except (SpecErrors, SpecError) as exc:
        _print_errors(exc)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
