"""Where a run happened, for its report: the versions of everything a number depends on, the git commit of the
claims (with "-dirty" when tracked files are modified), device, threads and workers."""

from __future__ import annotations

import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mechcheck.results import RunReport

__all__ = ["new_report", "versions"]


def versions() -> dict[str, str]:
    """Versions of Python and of the libraries whose behaviour a result depends on."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "platform": platform.platform(), "processor": platform.processor()}
    for pkg in ("mechcheck", "torch", "transformers", "transformer-lens", "numpy", "scipy", "scikit-learn",
                "umap-learn", "safetensors"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _git_sha(where: Path) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    sha = out.stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                           capture_output=True, text=True, timeout=5).stdout.strip()
    return sha + ("-dirty" if dirty else "")


def new_report(options: Any, argv: list[str], where: Path, device: str, workers: int = 1) -> RunReport:
    """An empty `RunReport` stamped with the environment (versions, git sha, device, threads, workers);
    `options` is the run's `mechcheck.runner.RunOptions` (its profile and threads)."""
    now = datetime.now(timezone.utc)
    return RunReport(
        run_id=now.strftime("%Y%m%d-%H%M%S") + f"-{options.profile}",
        started=now.isoformat(timespec="seconds"),
        profile=options.profile,
        argv=list(argv),
        versions=versions(),
        git_sha=_git_sha(where),
        device=device,
        threads=options.threads or 1,
        workers=workers,
    )
