"""The `load` recipe: a local Hugging Face directory (safetensors only), a directory inside an installed package
(`pkg:`), or a hub id — never trained, never cached. A local checkpoint is fingerprinted (its config and weights'
SHA-256, once per run) so that its cache key changes with its bytes; `--override DIR/seed{i}` patterns are filled
with the replicate's index here."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from mechcheck.cache import cache_key
from mechcheck.paths import is_pkg_path
from mechcheck.recipes import BuildContext, Built, make_task
from mechcheck.registry import RECIPES

__all__ = ["load_config", "load_facts", "build_load"]


def _load_path(spec, seed: int) -> str:
    """A `load` fixture's path for replicate `seed` (a per-replicate pattern filled in)."""
    from mechcheck.spec.overrides import fill_pattern

    return fill_pattern(spec.path, seed)


def load_config(spec, seed: int = 0) -> dict[str, Any]:
    from mechcheck.models import check_checkpoint_dir, resolve_local_or_hub

    if spec.path:
        path = _local_path(_load_path(spec, seed))
        check_checkpoint_dir(path)
        return json.loads((path / "config.json").read_text())
    where, local = resolve_local_or_hub(spec.hub)
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(where, revision=spec.revision, local_files_only=local).to_dict()


def _fingerprint(path: Path) -> tuple[str, dict[str, str]]:
    """SHA-256 over a checkpoint directory's config and safetensors files (name + content), and each file's own
    SHA-256 (a trained model's report gives its model.safetensors hash; a loaded one's is then comparable)."""
    h, files = hashlib.sha256(), {}
    for p in sorted([path / "config.json", *path.glob("*.safetensors")]):
        h.update(p.name.encode())
        one = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
                one.update(chunk)
        files[p.name] = one.hexdigest()
    return h.hexdigest(), files


def load_facts(spec, seed: int, ctx: BuildContext) -> dict[str, Any]:
    """Where replicate `seed` of a `load` fixture comes from, and its weights' hashes (local checkpoints)."""
    facts: dict[str, Any] = {"source": _load_path(spec, seed) if spec.path else f"hub:{spec.hub}"}
    if spec.revision:
        facts["revision"] = spec.revision
    if spec.replaces:
        facts["replaces"] = spec.replaces
    if spec.path:
        _load_payload(spec, seed, ctx)  # fingerprints the directory once per run
        _, fingerprint, files = ctx.fingerprints[str(_local_path(_load_path(spec, seed)))]
        facts["fingerprint"] = fingerprint
        facts["weights_sha256"] = files.get("model.safetensors") or fingerprint
    return facts


def _local_path(path: str) -> Path:
    """A fixture's `path` as a directory: package paths resolved (missing package: skipped), others as is."""
    from mechcheck.models import CheckpointError
    from mechcheck.paths import PackagePathError, resolve_pkg_path

    if not is_pkg_path(path):
        return Path(path)
    try:
        return resolve_pkg_path(path)
    except PackagePathError as exc:
        raise CheckpointError(str(exc)) from exc


def _load_payload(spec, seed: int, ctx: BuildContext) -> dict[str, Any]:
    from mechcheck.models import check_checkpoint_dir

    extra = {k: v for k, v in (("dtype", spec.dtype), ("adapter", spec.adapter)) if v}  # keyless when unset
    if not spec.path:
        return {"recipe": "load", "hub": spec.hub, "revision": spec.revision, **extra}
    written = _load_path(spec, seed)
    path = _local_path(written)
    check_checkpoint_dir(path)
    stamp = max(p.stat().st_mtime for p in [path / "config.json", *path.glob("*.safetensors")])
    known = ctx.fingerprints.get(str(path))
    if known is None or known[0] != stamp:
        known = (stamp, *_fingerprint(path))
        ctx.fingerprints[str(path)] = known
    # spec.path as written for a package path (pkg:...): the key must not depend on where it is installed
    return {"recipe": "load", "path": written if is_pkg_path(written) else str(path), "fingerprint": known[1], **extra}


def merge_adapter(model, adapter: str):
    """`model` with a LoRA adapter (hub id or local directory) merged into its weights, via `peft` (the optional
    extra `mechcheck[peft]`): the result is a plain model, so every intervention sees ordinary layers."""
    from mechcheck.models import resolve_local_or_hub

    try:
        from peft import PeftModel
    except ImportError as exc:
        from mechcheck.errors import ClaimSkipped

        raise ClaimSkipped(f"adapter {adapter!r} needs the peft package (pip install 'mechcheck[peft]')") from exc
    path = Path(adapter).expanduser()
    where, local = (str(path), True) if path.is_dir() else resolve_local_or_hub(adapter)
    return PeftModel.from_pretrained(model, where, local_files_only=local).merge_and_unload()


@RECIPES.register("load", doc="load a local Hugging Face directory (safetensors only) or a hub id",
                  payload=_load_payload)
def build_load(spec, seed: int, ctx: BuildContext) -> Built:
    from mechcheck.models import load_checkpoint, resolve_local_or_hub

    key = cache_key(_load_payload(spec, seed, ctx))
    if key not in ctx.memo:
        if spec.path:
            where, local = str(_local_path(_load_path(spec, seed))), True
        else:
            where, local = resolve_local_or_hub(spec.hub)
        model = load_checkpoint(where, local=local, revision=spec.revision, dtype=spec.dtype)
        if spec.adapter:
            model = merge_adapter(model, spec.adapter)
        task = make_task(spec.task) if spec.task else None
        info = {**load_facts(spec, seed, ctx), **({"dtype": spec.dtype} if spec.dtype else {}),
                **({"adapter": spec.adapter} if spec.adapter else {})}
        ctx.memo[key] = Built(model, key, "load", False, info, task, (where, local, spec.revision))
    return ctx.memo[key]
