"""Content-addressed stores (trained models, and whatever else is worth keeping): verified, atomic, locked.

The key of an entry is the SHA-256 of a canonical JSON payload (`cache_key`): for a model, the normalised
recipe (defaults filled in), the keys of the fixtures it depends on, the task generator's version, the seed
and `CACHE_FORMAT`. Change any of them and the entry is rebuilt; change nothing and it is reused.

Layout under the cache root (`default_cache_dir`)::

    <kind>/<key[:2]>/<key>/   an entry: its files + mechcheck.json (key, the caller's metadata, file hashes)
    locks/<key>.lock          one lock file per key that was ever built (left in place, see `Store.lock`)
    partial/<key>/            resumable work in progress for a key (training state; see mechcheck.train_state)

An entry is written into a temporary directory next to its final name and renamed into place, so a run that
dies never leaves a half-written entry under the final name; an entry whose files do not match their recorded
hashes is deleted and rebuilt, never used. `Store.lock` keeps two processes sharing a cache (two runs,
pytest-xdist workers) from building the same key at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["CACHE_FORMAT", "ModelCache", "Store", "cache_key", "default_cache_dir", "file_sha256"]

#: Bump when the layout of an entry or the meaning of a payload changes.
#: 2: entries moved under `<kind>/` (models/), locks and partial state added.
CACHE_FORMAT = 2
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


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _files(directory: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file under `directory` (sub-folders included)."""
    return {p.relative_to(directory).as_posix(): file_sha256(p)
            for p in sorted(directory.rglob("*")) if p.is_file()}


class Store:
    """Entries of one `kind` by key: `get` returns a verified entry or None, `put` stores atomically.

    Entries live at ``root/kind/<key[:2]>/<key>/``. Metadata JSON (``mechcheck.json`` in the entry) holds
    ``key``, the caller's `meta` fields and ``files`` (name -> SHA-256 of every file the writer wrote).
    """

    def __init__(self, root: Path | str, kind: str) -> None:
        if not kind or "/" in kind or kind.startswith(".") or kind in ("locks", "partial"):
            raise ValueError(f"Store kind {kind!r}: use a plain folder name other than 'locks' and 'partial'")
        self.root = Path(root).expanduser()
        self.kind = kind

    def entry(self, key: str) -> Path:
        """Where the entry for `key` lives (whether or not it exists)."""
        return self.root / self.kind / key[:2] / key

    def partial_dir(self, key: str) -> Path:
        """``root/partial/<key>/``: where resumable work in progress for `key` lives (not created here)."""
        return self.root / "partial" / key

    def get(self, key: str) -> tuple[Path, dict[str, Any]] | None:
        """The entry directory and its metadata, or None when missing; a corrupted entry is removed."""
        path = self.entry(key)
        if not path.exists():
            return None
        try:
            meta = json.loads((path / _META).read_text())
            files = meta["files"]
            ok = meta.get("key") == key and bool(files) and all(
                file_sha256(path / name) == digest for name, digest in files.items()
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            ok = False
        if not ok:
            shutil.rmtree(path, ignore_errors=True)
            return None
        return path, meta

    def put(self, key: str, write: Callable[[Path], None], meta: dict[str, Any]) -> Path:
        """Store the files `write(tmpdir)` writes, with `meta`, under `key` atomically; returns the entry path.

        If another process stored `key` first, its verified entry is kept and this one is dropped.
        """
        clash = {"key", "files"} & set(meta)
        if clash:
            raise ValueError(f"Store.put: meta fields {sorted(clash)} are reserved (the store writes them)")
        final = self.entry(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key[:12]}-", dir=final.parent))
        try:
            write(tmp)
            if (tmp / _META).exists():
                raise ValueError(f"Store.put: the writer wrote {_META}, which the store reserves for metadata")
            files = _files(tmp)
            if not files:
                raise ValueError(f"Store.put({key[:12]}...): the writer wrote no files")
            record = {**meta, "key": key, "files": files}
            (tmp / _META).write_text(json.dumps(record, indent=2, sort_keys=True, default=str))
            try:
                os.replace(tmp, final)  # atomic on POSIX when `final` does not exist (or is an empty directory)
            except OSError:
                # Another process stored the same key first (or a stale entry exists): keep the verified one.
                if self.get(key) is None:
                    shutil.rmtree(final, ignore_errors=True)
                    os.replace(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return final

    @contextlib.contextmanager
    def lock(self, key: str, on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
        """Hold an exclusive, cross-process lock for `key` (``fcntl.flock`` on ``root/locks/<key>.lock``).

        When another process holds it, ``on_wait(holder)`` is called once (holder: "process PID on HOST since
        TIME", from the lock file) and the call blocks until the lock is free. A lock dies with its process:
        the OS releases a flock when the holder exits or is killed, so a crashed run never leaves a stale
        lock. Lock files stay in place (deleting one would race with a process waiting on it). Not reentrant:
        taking the same key twice in one process deadlocks.
        """
        import fcntl

        path = self.root / "locks" / f"{key}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if not _try_lock(fd, path, on_wait):
                fcntl.flock(fd, fcntl.LOCK_EX)
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                      "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode(), 0)
            try:
                yield
            finally:
                os.ftruncate(fd, 0)  # so a later waiter never reads a finished holder's name
        finally:
            os.close(fd)  # releases the flock


def _try_lock(fd: int, path: Path, on_wait: Callable[[str], None] | None) -> bool:
    """Take the flock on `fd` if it is free (True); else tell `on_wait` who holds it and return False.

    A holder writes its name just after taking the lock, so an empty file is re-read for up to 2 s
    (taking the lock if it frees meanwhile) before the holder is called "another process".
    """
    import fcntl

    deadline = time.monotonic() + 2.0
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            pass
        holder = _holder(path)
        if holder is not None or time.monotonic() > deadline:
            if on_wait is not None:
                on_wait(holder or "another process")
            return False
        time.sleep(0.01)


def _holder(path: Path) -> str | None:
    """Who holds the lock at `path`, as its lock file says; None when it does not say (yet)."""
    try:
        info = json.loads(path.read_text())
        return f"process {info['pid']} on {info['host']} since {info['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return None


class ModelCache:
    """Trained models by key: a `Store` of kind "models" whose entries are Hugging Face model directories."""

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root).expanduser() if root else default_cache_dir()
        self.store = Store(self.root, "models")

    def entry(self, key: str) -> Path:
        """Where the model for `key` lives (whether or not it exists)."""
        return self.store.entry(key)

    def get(self, key: str) -> tuple[Path, dict[str, Any]] | None:
        """The model directory and metadata (key, payload, info, files), or None; a corrupted entry is removed."""
        return self.store.get(key)

    def put(self, key: str, model, payload: dict[str, Any], info: dict[str, Any]) -> Path:
        """Save `model` (safetensors) with its payload and training info under `key`; returns the entry path."""
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # our own progress is shown; HF's shard bar is noise in logs
        return self.store.put(key, lambda tmp: model.save_pretrained(tmp, safe_serialization=True),
                              {"payload": payload, "info": info})

    def lock(self, key: str, on_wait: Callable[[str], None] | None = None):
        """`Store.lock` for `key`: hold it around "look up, else train and store"."""
        return self.store.lock(key, on_wait)

    def partial_dir(self, key: str) -> Path:
        """Where the resumable training state of `key` lives."""
        return self.store.partial_dir(key)
