"""`mechcheck export FIXTURE DIR`: a built model fixture written as a Hugging Face directory.

The directory holds `config.json` and `model.safetensors` (never a pickle), the tokenizer of the fixture's task
when it has a real one (`tokenizer.json` and friends) or its word-level vocabulary (`vocab.json`: the words in
id order, id 0 the padding), and `mechcheck.json` (the fixture, replicate, cache key, weight hash and how it
was built). It loads back with `recipe: load` / `--override FIXTURE=DIR`, so a user can take a model out,
change it, and gate on it. The model is taken from the cache, or built (trained) first when it is not there.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["export_fixture"]


def export_fixture(spec, out_dir: Path, seed: int, ctx, force: bool = False) -> dict[str, Any]:
    """Build (or fetch) replicate `seed` of model fixture `spec` and write it to `out_dir`; returns mechcheck.json."""
    from mechcheck.cache import file_sha256
    from mechcheck.recipes import build_model, make_task, model_ref, replicates
    from mechcheck.tasks import WordVocab

    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise FileExistsError(f"{out_dir} exists and is not empty (use --force to overwrite)")
    n = replicates(spec, seed + 1)
    if n == 1 and seed != 0 and spec.recipe != "load":
        raise ValueError(f"fixture '{spec.name}' is one model (fixed seed {spec.seed}): it has no replicate {seed}")
    ref = model_ref(spec, seed, ctx)
    built = build_model(spec, seed, ctx)
    out_dir.mkdir(parents=True, exist_ok=True)
    built.model.save_pretrained(out_dir, safe_serialization=True)
    for stale in out_dir.glob("*.bin"):  # never leave a pickle next to the weights
        stale.unlink()
    vocab_file = None
    task_spec = spec.task
    if task_spec is not None:
        vocab = make_task(task_spec).vocab
        if isinstance(vocab, WordVocab):
            (out_dir / "vocab.json").write_text(json.dumps({"words": vocab.words}, indent=1) + "\n")
            vocab_file = "vocab.json"
        elif vocab is not None and hasattr(vocab, "save_pretrained"):
            vocab.save_pretrained(out_dir)
            vocab_file = "tokenizer"
    weights = out_dir / "model.safetensors"
    meta = {"fixture": spec.name, "recipe": spec.recipe, "replicate": ref.seed, "cache_key": ref.key,
            "weights_sha256": file_sha256(weights) if weights.is_file() else None,
            "task": task_spec.name if task_spec else None, "vocabulary": vocab_file,
            "info": {k: v for k, v in (built.info or {}).items() if k != "history"}}
    (out_dir / "mechcheck.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
    return meta
