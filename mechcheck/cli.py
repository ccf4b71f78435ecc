"""The `mechcheck` command: run | validate | ls | compare | baseline | export | schema | new.

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

from mechcheck.commands import _cmd_baseline, _cmd_compare, _cmd_export, _cmd_new, _cmd_schema, _compare, _read_report
from mechcheck.errors import SpecError, SpecErrors

__all__ = ["main"]


EXIT_CODES = """exit codes:
  0    every claim passed (with --baseline: no check regressed)
  1    some claim failed, was inconclusive or was skipped (with --baseline: some check regressed)
  2    invalid input: a claim or fixture file, or an argument (one line per problem, nothing was run)
  3    some claim ended as error (the harness or the set-up broke: a missing checkpoint, a crash)
  130  interrupted (the report keeps what was judged; the rest is marked interrupted)"""


class _Help(argparse.RawDescriptionHelpFormatter):
    """Defaults shown after each option that has one; epilogs (exit codes, examples) kept as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if default in (None, False, [], argparse.SUPPRESS) or "default" in text or not action.option_strings \
                and action.nargs not in ("*", "?"):
            return text
        shown = " ".join(map(str, default)) if isinstance(default, list) else default
        return f"{text} (default: {shown})"


def _sub(sub, name: str, help: str, example: str, exit_codes: str = EXIT_CODES) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help, description=help, formatter_class=_Help,
                          epilog=f"{exit_codes}\n\nexample:\n  {example}")


def _selection(p: argparse.ArgumentParser, override: bool = True) -> None:
    """Arguments shared by run / validate / ls: which claims, which profile, where fixtures are, overrides."""
    p.add_argument("paths", nargs="*", default=["claims"], help="claim files or directories of them")
    p.add_argument("--profile", default="ci", help="profile to apply (ci: CPU-sized; paper: the published setting)")
    p.add_argument("--fixtures-dir", type=Path, default=None,
                   help="fixtures directory (default: the nearest fixtures/ above each claim)")
    p.add_argument("-k", dest="keyword", default=None, metavar="EXPR",
                   help="only claims whose id, file name or tags match EXPR (substrings with and / or / not, "
                        "as pytest's -k)")
    p.add_argument("--tag", action="append", default=[], metavar="TAG", help="only claims with this tag (repeatable)")
    if override:
        p.add_argument("--override", action="append", default=[], metavar="FIXTURE=LOCATION",
                       help="replace model fixture FIXTURE (wherever it appears in a from: chain) by a checkpoint: a "
                            "local Hugging Face directory, DIR/seed{i} (one per replicate), pkg:PKG/PATH or "
                            "hub:ORG/NAME (repeatable)")


def _parser() -> argparse.ArgumentParser:
    from mechcheck import __version__

    p = argparse.ArgumentParser(prog="mechcheck", description="pytest for mechanistic hypotheses",
                                formatter_class=_Help, epilog=f"{EXIT_CODES}\n\nexample:\n  mechcheck run claims/")
    p.add_argument("--version", action="version", version=f"mechcheck {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = _sub(sub, "run", "validate, then run claims and write a report",
               "mechcheck run claims/ --override cdm-finetuned=ckpt/seed{i} --baseline reports/baselines/ci.json")
    _selection(run)
    run.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    run.add_argument("--cache-dir", type=Path, default=None,
                     help="where trained models are cached (default $MECHCHECK_CACHE_DIR or ~/.cache/mechcheck)")
    run.add_argument("--report-dir", type=Path, default=Path("reports"), help="reports go to REPORT_DIR/<run id>/")
    run.add_argument("--seeds", type=int, default=None, help="override every claim's number of seeds")
    run.add_argument("--workers", type=int, default=None,
                     help="worker processes for training and measuring (default $MECHCHECK_WORKERS or the number "
                          "of cores; 1 runs everything in this process)")
    run.add_argument("--threads", type=int, default=None,
                     help="torch threads per worker while measuring (default $MECHCHECK_THREADS or 1: the same "
                          "bits whatever the number of workers)")
    run.add_argument("--train-threads", type=int, default=1,
                     help="torch threads while training (1: trained models are bit-identical across runs; 2 trains "
                          "about 1.75x faster on 2 cores but not bit-reproducibly)")
    run.add_argument("--n-boot", type=int, default=200,
                     help="resamples of the within-replicate bootstraps behind per-replicate statistics")
    run.add_argument("--baseline", type=Path, default=None, metavar="REPORT",
                     help="compare every check with this baseline or report.json; the exit code then says whether "
                          "a check regressed (see `mechcheck compare`)")
    run.add_argument("--tolerance", type=float, default=None,
                     help="with --baseline: the largest move against a claim that is not a regression, in the "
                          "effect's units (default: calibrated from both runs' noise)")
    run.add_argument("--junit-xml", type=Path, default=None, metavar="PATH",
                     help="also write JUnit XML (a testsuite per claim, a testcase per check)")

    val = _sub(sub, "validate", "check claim and fixture files without touching a model",
               "mechcheck validate claims/ --profile paper", exit_codes="exit codes:\n  0    valid\n  2    invalid "
               "input (one line per problem)")
    _selection(val)

    ls = _sub(sub, "ls", "list claims, fixtures, experiments, checks, tasks and recipes", "mechcheck ls claims/lin2024",
              exit_codes="exit codes:\n  0    listed\n  2    invalid input")
    _selection(ls)

    cmp = _sub(sub, "compare", "compare two runs check by check and say which checks regressed",
               "mechcheck compare reports/baselines/ci.json reports/20261201-120000-ci/report.json",
               exit_codes="exit codes:\n  0    no check regressed\n  1    some check regressed (its outcome got worse, "
               "or its effect moved against the claim beyond the tolerance)\n  2    a report cannot be read")
    cmp.add_argument("old", type=Path, help="the baseline: a baseline file or a report.json (or its run directory)")
    cmp.add_argument("new", type=Path, help="the new run: a report.json (or its run directory)")
    cmp.add_argument("--tolerance", type=float, default=None,
                     help="largest move against a claim that is not a regression, in the effect's units (default: "
                          "calibrated from both runs' noise)")
    cmp.add_argument("--out", type=Path, default=None, help="also write comparison.json and comparison.md to this directory")

    base = _sub(sub, "baseline", "stored baselines: `baseline update` writes reports/baselines/<profile>.json",
                "mechcheck baseline update --profile ci", exit_codes="exit codes:\n  0    written\n  2    no usable run")
    bsub = base.add_subparsers(dest="action", required=True, metavar="ACTION")
    upd = bsub.add_parser("update", formatter_class=_Help, help="write the baseline from a finished run",
                          description="Summarise a finished run into reports/baselines/<profile>.json and regenerate "
                                      "the README's outcome table from it.")
    upd.add_argument("--profile", default="ci", help="the profile whose baseline to write")
    upd.add_argument("--from", dest="source", type=Path, default=None, metavar="REPORT",
                     help="the run to take (default: the newest finished run of the profile under --report-dir)")
    upd.add_argument("--report-dir", type=Path, default=Path("reports"), help="where runs are")
    upd.add_argument("--out", type=Path, default=None, help="baseline file (default reports/baselines/<profile>.json)")
    upd.add_argument("--readme", type=Path, default=Path("README.md"),
                     help="README whose outcome table (between the mechcheck:outcomes markers) is regenerated")

    exp = _sub(sub, "export", "write a built model fixture as a Hugging Face directory (safetensors + vocabulary)",
               "mechcheck export cdm-finetuned out/cdm-finetuned-seed1 --seed 1",
               exit_codes="exit codes:\n  0    written\n  2    invalid input\n  3    the model could not be built")
    exp.add_argument("fixture", help="model fixture name (fixtures/models/<name>.yaml)")
    exp.add_argument("out", type=Path, help="directory to write")
    exp.add_argument("--seed", type=int, default=0, help="which replicate (a fixed-seed fixture has only one)")
    exp.add_argument("--profile", default="ci", help="profile to apply to the fixture")
    exp.add_argument("--fixtures-dir", type=Path, default=None, help="fixtures directory (default: ./fixtures)")
    exp.add_argument("--cache-dir", type=Path, default=None, help="model cache (default $MECHCHECK_CACHE_DIR or "
                     "~/.cache/mechcheck)")
    exp.add_argument("--force", action="store_true", help="overwrite a non-empty directory")

    # authoring aids (mechcheck.authoring): the JSON Schema for editors, and claim skeletons
    sch = _sub(sub, "schema", "print the JSON Schema of claim and fixture files (for YAML editors)",
               "mechcheck schema -o mechcheck.schema.json", exit_codes="exit codes:\n  0    written")
    sch.add_argument("--kind", choices=("claim", "model", "task", "all"), default="all",
                     help="which files it describes (all: claims and fixtures, told apart by recipe / generator)")
    sch.add_argument("-o", "--output", type=Path, default=None, help="write it to this file instead of stdout")
    new = _sub(sub, "new", "write a commented claim skeleton for an experiment",
               "mechcheck new claims/mine/late_heads.yaml --experiment head_ablation",
               exit_codes="exit codes:\n  0    written\n  2    unknown experiment, or the file exists (use --force)")
    new.add_argument("path", type=Path, help="the claim file to write")
    new.add_argument("--experiment", required=True, help="a registered experiment (`mechcheck ls` lists them)")
    new.add_argument("--force", action="store_true", help="overwrite an existing file")
    new.add_argument("--fixtures-dir", type=Path, default=None,
                     help="fixtures to name (default: the nearest fixtures/ above PATH)")
    new.add_argument("--schema", default=None, help="path or URL of the schema file, written as the editor modeline")
    return p


def _load(args):
    """The selected claims of `args.paths`, validated as a whole suite (with --override applied)."""
    from mechcheck.select import select_claims
    from mechcheck.spec import load_claims
    from mechcheck.spec.overrides import parse_overrides

    overrides = parse_overrides(getattr(args, "override", []) or [])
    try:
        claims = load_claims([Path(p) for p in args.paths], profile=args.profile, fixtures_dir=args.fixtures_dir,
                             overrides=overrides)
    except SpecErrors as exc:
        for e in exc.errors:
            if e.file is None and e.field_path == "profile":  # it came from --profile
                e.file = "<command line>"
        raise
    return select_claims(claims, args.keyword, args.tag)


def _print_errors(exc: SpecErrors | SpecError) -> None:
    errors = exc.errors if isinstance(exc, SpecErrors) else [exc]
    errors = sorted(errors, key=lambda e: (e.file or "", e.line or 0))  # read top to bottom, file by file
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    print(f"{len(errors)} problem{'s' if len(errors) != 1 else ''} found; nothing was run.", file=sys.stderr)


def _cmd_validate(args) -> int:
    claims = _load(args)
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
    claims = _load(args)  # the whole suite validates before anything runs
    if not claims:
        raise SpecError("no claims found" + (" that match the selection" if args.keyword or args.tag else ""),
                        file=" ".join(args.paths))
    baseline = _read_report(args.baseline) if args.baseline else None
    console = Console(stderr=True) if sys.stderr.isatty() else Console(stderr=True, width=180)  # no wrapping in logs
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
    progress = WorkProgress(console, claims=[c.id for c in claims])

    def on_result(result) -> None:
        report.claims[next(judged)] = result
        progress.claim_done(result)
        report.write_json(out_dir / "report.json")  # after every claim: a run that dies keeps what it did
        style = outcome_style(result.outcome)
        line = f"  [{style}]{result.outcome:>12}[/]  {result.id}  ({result.durations.get('total', 0):.0f} s)"
        (progress.progress.console if progress.live else console).print(line)
        for note in result.notes:
            progress._say(f"  {'':>12}  note: {note}")
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
    if args.junit_xml:
        from mechcheck.report.junit import write_junit

        write_junit(report, args.junit_xml)
    # Wide enough for every column when stdout is a file or a CI log (rich would assume 80).
    out = Console() if sys.stdout.isatty() else Console(width=180)
    print_summary(report, out, report_path=paths.get("markdown"))
    if baseline is None:
        return exit_code(report)
    comparison = _compare(baseline, report, args.tolerance, out, out_dir)
    with open(paths["markdown"], "a") as f:  # the diff table in report.md too
        from mechcheck.report.diff import comparison_markdown

        f.write("\n" + comparison_markdown(comparison))
    if any(c.outcome == "error" for c in report.claims):
        return 3
    return 1 if comparison.regressed else 0


def _cmd_ls(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from mechcheck.registry import CHECKS, EXPERIMENTS, FIGURES, RECIPES, TASKS, UNITS
    from mechcheck.cache import ModelCache
    from mechcheck.models import CheckpointError
    from mechcheck.recipes import BuildContext, is_trained, model_ref, replicates
    from mechcheck.spec import find_fixtures_dir, list_fixtures

    console = Console() if sys.stdout.isatty() else Console(width=180)  # as in run: no "…" in logs
    paths = [p for p in args.paths if p != "claims" or Path("claims").is_dir()]  # the default only if present
    cache = ModelCache()  # $MECHCHECK_CACHE_DIR, as `run` without --cache-dir
    # A trained model's key includes where it trains; `ls` loads no torch to ask, so it looks for either
    # device (with `run`'s default of one training thread).
    contexts = {device: BuildContext(cache, device, None, 1) for device in ("cpu", "cuda")}

    def availability(spec, seeds: int) -> str:
        """Whether a role's replicates are ready: a load fixture's checkpoint exists, a trained one's replicates
        are in the model cache (an existence test: `run` verifies the weights when it reads them)."""
        if not is_trained(spec):
            if spec.hub and not spec.path:
                from huggingface_hub import try_to_load_from_cache

                local = isinstance(try_to_load_from_cache(spec.hub, "config.json"), str)
                return f"hub {spec.hub}: " + ("downloaded" if local else "not downloaded")
            try:
                model_ref(spec, 0, contexts["cpu"])
            except CheckpointError:
                return "checkpoint missing"
            return "checkpoint present"
        n = replicates(spec, seeds)
        try:
            found = {d: sum(cache.entry(model_ref(spec, s, ctx).key).is_dir() for s in range(n))
                     for d, ctx in contexts.items()}
        except CheckpointError:  # a parent whose checkpoint is missing
            return "parent checkpoint missing"
        device = max(found, key=lambda d: found[d])
        if found[device] == 0:
            return f"0/{n} cached"
        return f"{found[device]}/{n} cached" + (f" ({device})" if device != "cpu" else "")

    if paths:
        args.paths = paths
        claims = _load(args)
        t = Table(title=f"claims (profile {args.profile}; model cache {cache.root})")
        # names are never cut (a cut name is a wrong name); what is long and free-form wraps
        widest = lambda names: max([len(n) for n in names] + [5])  # noqa: E731
        t.add_column("id / file", no_wrap=True, min_width=widest(c.id for c in claims))
        t.add_column("tags", overflow="fold", min_width=12)
        t.add_column("models (role=fixture: ready?)", overflow="fold", min_width=30)
        t.add_column("experiment", no_wrap=True, min_width=widest(c.experiment.name for c in claims))
        t.add_column("checks", no_wrap=True, min_width=widest(x.name for c in claims for x in c.expect))
        t.add_column("seeds", justify="right", min_width=5)
        for c in claims:
            models = "\n".join(f"{r}={m.name}: {availability(m, c.seeds)}" for r, m in c.models.items())
            t.add_row(f"{c.id}\n[dim]{c.file}[/]", ", ".join(c.tags) or "—", models, c.experiment.name,
                      "\n".join(x.name for x in c.expect), str(c.seeds), end_section=True)
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


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `mechcheck` console script."""
    args = _parser().parse_args(argv)
    try:
        return {"run": _cmd_run, "validate": _cmd_validate, "ls": _cmd_ls, "compare": _cmd_compare,
                "baseline": _cmd_baseline, "export": _cmd_export, "schema": _cmd_schema,
                "new": _cmd_new}[args.command](args)
    except (SpecErrors, SpecError) as exc:
        _print_errors(exc)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
