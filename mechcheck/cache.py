"""Content-addressed store of trained models.

The key of an entry is the SHA-256 of a canonical JSON payload: the normalised recipe (defaults filled in),
the keys of the fixtures it depends on, the task generator's version, the seed and `CACHE_FORMAT`. Change
any of them and the model is rebuilt; change nothing and it is reused.

An entry is a directory ``<root>/<key[:2]>/<key>/`` holding a Hugging Face model directory (config.json +
model.safetensors) and ``mechcheck.json`` (the payload, training info and the SHA-256 of every file). It is
written into a temporary directory and renamed into place, so a run that dies never leaves a half-written
entry under the final name; an entry whose files do not match their recorded hashes is deleted and rebuilt,
never used.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["CACHE_FORMAT", "ModelCache", "default_cache_dir", "cache_key"]

#: Bump when the layout of an entry or the meaning of a payload changes.
CACHE_FORMAT = 1
_META = "mechcheck.json"


def default_cache_dir() -> Path:
    """$MECHCHECK_CACHE_DIR, else $XDG_CACHE_HOME/mechcheck, else ~/.cache/mechcheck (outside the repo)."""
    if os.environ.get("MECHCHECK_CACHE_DIR"):
        return Path(os.environ["MECHCHECK_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mechcheck"


def cache_key(payload: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of `payload` (sorted keys, no whitespace)."""
    # The format goes last so that a payload can never override it.
    blob = json.dumps({**payload, "format": CACHE_FORMAT}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class ModelCache:
    """Trained models by key. `get` returns a verified directory or None; `put` stores atomically."""

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root).expanduser() if root else default_cache_dir()

    def entry(self, key: str) -> Path:
        return self.root / key[:2] / key

    def get(self, key: str) -> tuple[Path, dict[str, Any]] | None:
        """The entry's model directory and metadata, or None when missing; a corrupted entry is removed."""
        path = self.entry(key)
        if not path.exists():
            return None
        try:
            meta = json.loads((path / _META).read_text())
            files = meta["files"]
            ok = meta.get("key") == key and bool(files) and all(
                _sha256(path / name) == digest for name, digest in files.items()
            )
        except (OSError, ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            shutil.rmtree(path, ignore_errors=True)
            return None
        return path, meta

    def put(self, key: str, model, payload: dict[str, Any], info: dict[str, Any]) -> Path:
        """Save `model` (safetensors) with its metadata under `key`, atomically; returns the entry path."""
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # our own progress is shown; HF's shard bar is noise in logs
        final = self.entry(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key[:12]}-", dir=final.parent))
        try:
            model.save_pretrained(tmp, safe_serialization=True)
            files = {p.name: _sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}
            meta = {"key": key, "payload": payload, "info": info, "files": files}
            (tmp / _META).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
            try:
                os.replace(tmp, final)  # atomic on POSIX when `final` does not exist
            except OSError:
                # Another process stored the same key first (or a stale entry exists): keep the verified one.
                if self.get(key) is None:
                    shutil.rmtree(final, ignore_errors=True)
                    os.replace(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return final
