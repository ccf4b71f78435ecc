"""Save and restore a resumable training state, so a run killed mid-training continues to the same bits.

A state is everything the next step of `mechcheck.train` reads: the weights, the optimizer's tensors and
param groups, the LR scheduler's position, the numpy Generator and torch RNG states, the history and the
step reached. It lives in a checkpoint directory (`Checkpoint.dir`, for a fixture the cache's
``partial/<key>/``) as one complete sub-directory ``step-<n>/``:

    model.safetensors   the weights (a tensor shared by several names, e.g. GPT-2's tied embeddings, once)
    train.safetensors   optimizer tensors (``optimizer.<param index>.<name>``) and RNG states (``rng.torch``)
    state.json          fingerprint, step, history, param groups, scheduler, numpy RNG, aliases, file hashes

A save writes a temporary directory and renames it into place before deleting older states, so a kill at any
moment leaves the previous state, or the new one, complete (never pickle: tensors in safetensors, the rest
JSON). A state is only resumed when its fingerprint matches (same recipe, code version and initial weights)
and every file matches its recorded SHA-256; otherwise it is ignored and training starts from step 0.

Cost, measured on the 2-core CPU for the ci cdm-scratch shape (4 x 4, d=128, 0.8 M parameters): a save
takes about 13 ms and 9.6 MB (weights + two AdamW moments), against about 140 ms per training step, so even
a save after every step costs under 10 %; the default, one every 120 s, costs nothing measurable.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Checkpoint", "TrainState", "checkpoint_every", "fingerprint", "load_state", "save_state"]

#: Default seconds of training between two saves of the state.
DEFAULT_EVERY_S = 120.0
_ENV = "MECHCHECK_CHECKPOINT_EVERY"
_STATE = "state.json"
_FORMAT = 1


def checkpoint_every(default: float = DEFAULT_EVERY_S) -> float:
    """Seconds between saves: $MECHCHECK_CHECKPOINT_EVERY when set (0: after every step), else `default`."""
    raw = os.environ.get(_ENV, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"{_ENV}={raw!r}: expected the seconds between saves of the training state, a number "
                         f">= 0 (unset it for the default, {default:g} s)")
    return value


@dataclass(frozen=True)
class Checkpoint:
    """Where and how often `mechcheck.train.train` saves a resumable state.

    `dir`: the checkpoint directory (created on the first save). `every_s`: seconds of training between
    saves (None: `checkpoint_every()`). `fingerprint`: what the state belongs to, as the caller knows it (a
    fixture's cache key); training adds its own facts (spec, seed, code version, initial weights).
    """

    dir: Path
    every_s: float | None = None
    fingerprint: str = ""

    def interval(self) -> float:
        """The seconds between saves this checkpoint asks for."""
        return checkpoint_every() if self.every_s is None else float(self.every_s)

    def clear(self) -> None:
        """Delete every saved state (once the finished model is stored, nothing is left to resume)."""
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass
class TrainState:
    """What `load_state` restored besides the model, optimizer and scheduler (which it loads in place)."""

    step: int
    history: list[dict[str, float]]
    loss: float
    accuracy: float
    seconds: float
    numpy_rng: dict[str, Any]
    torch_rng: Any  # uint8 tensor, torch.get_rng_state()
    cuda_rng: Any = None  # uint8 tensor when trained on CUDA
    path: Path | None = None


def fingerprint(caller: str, spec: Any, seed: int, device: str, threads: int | None, version: str, model) -> str:
    """SHA-256 naming what a state belongs to: the caller's fingerprint, the training spec, seed, device,
    threads, training-code version and the model's initial weights (call it before training starts)."""
    import dataclasses
    import hashlib

    import torch

    spec_d = dataclasses.asdict(spec) if dataclasses.is_dataclass(spec) else repr(spec)
    h = hashlib.sha256(json.dumps({"caller": caller, "train": spec_d, "seed": seed, "device": device.split(":")[0],
                                   "threads": threads, "version": version, "format": _FORMAT},
                                  sort_keys=True, default=str).encode())
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _unique_tensors(model) -> tuple[dict[str, Any], dict[str, str]]:
    """(name -> tensor, one name per storage; alias -> kept name) of the model's state dict."""
    kept, aliases, seen = {}, {}, {}
    for name, t in model.state_dict().items():
        ident = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if ident in seen:
            aliases[name] = seen[ident]
        else:
            seen[ident] = name
            kept[name] = t.detach().to("cpu").contiguous()
    return kept, aliases


def save_state(directory: Path, *, fingerprint: str, step: int, model, optimizer, scheduler, numpy_rng: dict,
               torch_rng, history: list, loss: float, accuracy: float, seconds: float, cuda_rng=None) -> Path:
    """Write the state after `step` completed steps as ``directory/step-<n>/`` atomically; older states go."""
    from safetensors.torch import save_file

    from mechcheck.cache import file_sha256

    directory.mkdir(parents=True, exist_ok=True)
    weights, aliases = _unique_tensors(model)
    opt = optimizer.state_dict()
    tensors, scalars = {"rng.torch": torch_rng.contiguous()}, {}
    if cuda_rng is not None:
        tensors["rng.cuda"] = cuda_rng.to("cpu").contiguous()
    for index, entry in opt["state"].items():
        for name, value in entry.items():
            if hasattr(value, "detach"):
                tensors[f"optimizer.{index}.{name}"] = value.detach().to("cpu").contiguous()
            else:
                scalars[f"{index}.{name}"] = value
    sched = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
    record = {"format": _FORMAT, "fingerprint": fingerprint, "step": step, "history": history,
              "loss": _json_float(loss), "accuracy": _json_float(accuracy), "seconds": seconds,
              "numpy_rng": numpy_rng, "aliases": aliases, "param_groups": opt["param_groups"],
              "optimizer_scalars": scalars, "scheduler": sched}
    final = directory / f"step-{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=directory))
    try:
        save_file(weights, tmp / "model.safetensors")
        save_file(tensors, tmp / "train.safetensors")
        record["files"] = {n: file_sha256(tmp / n) for n in ("model.safetensors", "train.safetensors")}
        (tmp / _STATE).write_text(json.dumps(record, sort_keys=True))
        if final.exists():  # the same step saved twice (an interrupt during a save): replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    for old in directory.iterdir():  # only now: until the rename the previous state is the one to resume
        if old == final:
            continue
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
    return final


def _json_float(x: float) -> float | None:
    return None if x is None or math.isnan(x) else x


def _float(x) -> float:
    return float("nan") if x is None else float(x)


def load_state(directory: Path, fingerprint: str, model, optimizer,
               scheduler) -> tuple[TrainState | None, list[str]]:
    """Restore the newest usable state under `directory` into `model`, `optimizer`, `scheduler` (in place).

    Returns (the rest of the state, or None when there is nothing to resume; one note per state skipped
    because it is corrupted or belongs to something else). Nothing is touched unless a state is usable.
    """
    notes: list[str] = []
    candidates = sorted(directory.glob("step-*"), reverse=True) if directory.is_dir() else []
    for path in candidates:
        try:
            state, apply = _read(path, fingerprint, model, optimizer)
        except _Unusable as exc:
            notes.append(f"ignoring the saved training state {path}: {exc}")
            continue
        except (KeyError, ValueError, TypeError, AttributeError) as exc:  # verified files, but not our layout
            notes.append(f"ignoring the saved training state {path}: malformed ({type(exc).__name__}: {exc})")
            continue
        try:
            apply(model, optimizer, scheduler)
        except Exception as exc:
            raise RuntimeError(f"restoring the training state {path} failed halfway ({exc}); delete {directory} "
                               "and run again to train from step 0") from exc
        return state, notes
    return None, notes


class _Unusable(Exception):
    """A saved state that cannot be resumed (the message says why)."""


def _read(path: Path, fingerprint: str, model, optimizer):
    """Verify and read the state at `path` without touching the model; returns (state, apply)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from mechcheck.cache import file_sha256

    try:
        record = json.loads((path / _STATE).read_text())
        files = record["files"]
        for name, digest in files.items():
            if file_sha256(path / name) != digest:
                raise _Unusable(f"{name} does not match its recorded SHA-256 (corrupted)")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise _Unusable(f"unreadable ({type(exc).__name__}: {exc})") from None
    if record.get("format") != _FORMAT or record.get("fingerprint") != fingerprint:
        raise _Unusable("it was saved for another recipe, seed, code version or starting model")
    try:
        weights = load_file(path / "model.safetensors")
        tensors = load_file(path / "train.safetensors")
    except (OSError, SafetensorError) as exc:
        raise _Unusable(f"unreadable tensors ({exc})") from None

    aliases = record["aliases"]
    current = model.state_dict()
    for name, t in current.items():
        src = weights.get(aliases.get(name, name))
        if src is None or src.shape != t.shape or src.dtype != t.dtype:
            raise _Unusable(f"its weights do not fit the model ({name})")
    opt_state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, index, field_name = name.split(".", 2)
            opt_state.setdefault(int(index), {})[field_name] = value
    for name, value in record["optimizer_scalars"].items():
        index, field_name = name.split(".", 1)
        opt_state.setdefault(int(index), {})[field_name] = value
    groups = record["param_groups"]
    live = optimizer.state_dict()["param_groups"]
    if len(groups) != len(live) or any(len(g["params"]) != len(h["params"]) for g, h in zip(groups, live)):
        raise _Unusable("its optimizer has other parameter groups than this model's")
    # JSON turned tuples (AdamW's betas) into lists; give them back the type torch wrote.
    groups = [{k: tuple(v) if isinstance(h.get(k), tuple) else v for k, v in g.items()} for g, h in zip(groups, live)]
    sched = dict(record["scheduler"])

    def apply(model, optimizer, scheduler) -> None:
        import torch

        with torch.no_grad():
            for name, t in model.state_dict().items():
                t.copy_(weights[aliases.get(name, name)])
        optimizer.load_state_dict({"state": opt_state, "param_groups": groups})
        if hasattr(scheduler, "lr_lambdas"):  # LambdaLR: its functions are code, not state (saved as None)
            sched["lr_lambdas"] = [None] * len(scheduler.lr_lambdas)
        scheduler.load_state_dict(sched)

    state = TrainState(step=int(record["step"]), history=record["history"], loss=_float(record["loss"]),
                       accuracy=_float(record["accuracy"]), seconds=float(record["seconds"]),
                       numpy_rng=record["numpy_rng"], torch_rng=tensors["rng.torch"],
                       cuda_rng=tensors.get("rng.cuda"), path=path)
    return state, apply
