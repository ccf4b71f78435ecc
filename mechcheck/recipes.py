"""Model recipes: how a model fixture is built, and its cache key, which is known before anything is built.

Recipes (registered in `RECIPES`, each with a ``key=`` function beside its build function):
  scratch   random GPT-2-architecture weights (or a parent fixture's config with fresh random weights,
            `from`), trained on a task (answer loss by default)
  pretrain  random weights, next-token loss on every position of a (corpus) task
  finetune  a parent fixture's weights, trained further on a task
  load      a local Hugging Face directory (safetensors) or a hub id; never trained, never cached
            (`mechcheck.loading`)

A fixture's cache key covers its normalised recipe, its task generator's version, the seed and the keys of
the fixtures it depends on, so a change anywhere upstream rebuilds everything downstream of it. `model_ref`
computes it without building anything (a loaded checkpoint is fingerprinted, not loaded), so the engine can
tell what is cached, and which measurements are, before it loads or trains a single model.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from mechcheck.cache import ModelCache, cache_key
from mechcheck.registry import RECIPES, TASKS
from mechcheck.tasks import Task

__all__ = ["BuildContext", "Built", "build_model", "make_task", "is_trained", "replicates", "model_ref", "parents",
           "model_config", "task_payload", "is_fixed"]


@dataclass
class BuildContext:
    """What building needs: the cache, the device, a console for progress, and a per-run memo."""

    cache: ModelCache
    device: str = "cpu"
    console: Any = None
    #: torch threads while training (1: bit-reproducible replicates; see mechcheck.train)
    train_threads: int | None = 1
    #: seconds of training between saves of a resumable state (None: $MECHCHECK_CHECKPOINT_EVERY, else 120)
    checkpoint_every: float | None = None
    #: fixture key -> Built, so a fixture shared by several claims (or a parent shared by several
    #: children) is built or loaded once per run
    memo: dict[str, Built] = field(default_factory=dict)
    #: checkpoint directory -> (mtime, fingerprint, file hashes): a loaded checkpoint is hashed once per run
    fingerprints: dict[str, tuple[float, str, dict[str, str]]] = field(default_factory=dict)
    #: training progress callback (step, steps, fields), e.g. forwarded from a worker process
    on_progress: Any = None


@dataclass
class Built:
    """A built fixture replicate: the HF model and how it came to be."""

    model: Any
    key: str
    recipe: str
    cached: bool
    info: dict[str, Any]
    task: Task | None
    #: where the same weights can be read again: (location, local, revision) for `load_checkpoint`
    source: tuple[str, bool, str | None] | None = None

    def pristine_copy(self):
        """A copy of the weights as built, for a child to start from (fine-tuning): experiments intervene
        through hooks and never change a model, so a deep copy holds the very bits of the cache entry."""
        import copy

        return copy.deepcopy(self.model)


_TASK_MEMO: dict[str, Task] = {}


def make_task(spec) -> Task:
    """The `Task` a `TaskSpec` describes (memoised: building a tokenizer-backed task is not free)."""
    entry = TASKS.get(spec.generator)
    args = entry.with_defaults(dict(spec.args))
    memo_key = json.dumps([spec.generator, args], sort_keys=True, default=str)
    if memo_key not in _TASK_MEMO:
        _TASK_MEMO[memo_key] = entry.func(**args)
    return _TASK_MEMO[memo_key]


def train_payload(train) -> dict[str, Any]:
    """A TrainSpec as it enters cache keys: `hints` and `stop_at` only when set (they were added later; the keys of
    fixtures without them stay as they were)."""
    out = dataclasses.asdict(train)
    for later in ("hints", "stop_at"):
        if out.get(later) is None:
            out.pop(later, None)
    return out


def task_payload(spec) -> dict[str, Any]:
    entry = TASKS.get(spec.generator)
    args = entry.with_defaults(dict(spec.args))
    # Arguments added after models were cached leave the key alone at the value that reproduces the old data.
    for k, v in entry.meta.get("keyless_defaults", {}).items():
        if k in args and args[k] == v:
            del args[k]
    return {"generator": spec.generator, "args": args, "version": entry.meta.get("version", "0")}


def is_trained(spec) -> bool:
    """Whether building `spec` trains anything (then seeds give independent replicates).

    Every recipe but `load` trains, and `load` has no parent, so the recipe alone decides.
    """
    return spec.recipe != "load"


def replicates(spec, seeds: int) -> int:
    """How many distinct replicates `seeds` seeds give of `spec`: one for a loaded or fixed-seed fixture,
    `seeds` for a trained one and for a per-replicate checkpoint pattern (`--override NAME=dir/seed{i}`)."""
    if _is_pattern(spec):
        return seeds
    return seeds if is_trained(spec) and getattr(spec, "seed", None) is None else 1


def is_fixed(spec) -> bool:
    """Whether `spec` is one model whatever the seed (a checkpoint or a fixed-seed training): then a claim
    about it is about that checkpoint, not about a recipe."""
    return replicates(spec, 2) == 1


def _is_pattern(spec) -> bool:
    from mechcheck.spec.overrides import is_pattern

    return is_pattern(spec)


def build_model(spec, seed: int, ctx: BuildContext) -> Built:
    """Build (or fetch from the cache) replicate `seed` of model fixture `spec` (its own `seed`, if fixed)."""
    if getattr(spec, "seed", None) is not None:
        seed = spec.seed
    return RECIPES.get(spec.recipe).func(spec, seed, ctx)


def model_ref(spec, seed: int, ctx: BuildContext):
    """Replicate `seed` of `spec` as a `ModelRef` (spec, the seed it is built with, cache key); builds nothing."""
    from mechcheck.measurements import ModelRef

    if getattr(spec, "seed", None) is not None:
        seed = spec.seed
    return ModelRef(spec, seed, _key(spec, seed, ctx))


def _key(spec, seed: int, ctx: BuildContext) -> str:
    return cache_key(RECIPES.get(spec.recipe).meta["payload"](spec, _seed(spec, seed), ctx))


def parents(ref, ctx: BuildContext) -> list:
    """The `ModelRef`s that building `ref` starts from (a fine-tune's parent; a twin's config source)."""
    spec = ref.spec
    if spec.parent is None:
        return []
    return [model_ref(spec.parent, ref.seed if spec.recipe == "finetune" else 0, ctx)]


def model_config(ref, ctx: BuildContext) -> dict[str, Any]:
    """The Hugging Face config (as a dict) of `ref`'s model, without building it when it is not cached.

    From the cache entry if there is one; else a trained fixture's declared architecture or its parent's
    config; a loaded checkpoint's config.json (a hub id is resolved, which skips the claim when offline).
    """
    spec = ref.spec
    hit = ctx.cache.get(ref.key) if is_trained(spec) else None
    if hit is not None:
        return json.loads((hit[0] / "config.json").read_text())
    if spec.recipe == "load":
        from mechcheck.loading import load_config

        return load_config(spec, ref.seed)
    if spec.parent is not None:
        return model_config(parents(ref, ctx)[0], ctx)
    arch = dict(spec.architecture or {})
    task = make_task(spec.task)
    return {"model_type": "gpt2", "n_layer": arch["n_layer"], "n_head": arch["n_head"], "n_embd": arch["n_embd"],
            "vocab_size": arch.get("vocab_size") or task.vocab_size}


def _trained(payload: dict[str, Any], ctx: BuildContext) -> dict[str, Any]:
    """A training recipe's payload completed with where and how it trains (both change the bits)."""
    from mechcheck.train import VERSION as TRAIN_VERSION

    # Where and how a model was trained changes its bits (CUDA vs CPU kernels; how many threads split each
    # reduction), so it is part of the key: one key, one set of weights.
    return {**payload, "trained_on": {"device": ctx.device.split(":")[0], "threads": ctx.train_threads},
            "train_code": TRAIN_VERSION}


def _train_and_cache(spec, seed: int, ctx: BuildContext, payload: dict[str, Any], init) -> Built:
    """Shared tail of the training recipes: cache lookup, else (holding the key's lock) init() + train + store.

    The lock keeps two processes sharing a cache (two runs, pytest-xdist workers, the engine's workers) from
    training the same fixture at once: the second waits, then finds the first one's entry.
    """
    key = cache_key(payload)
    if key in ctx.memo:
        return ctx.memo[key]
    task = make_task(spec.task)
    label = f"{spec.recipe} {spec.name} (seed {seed})"
    hit = ctx.cache.get(key)
    built = None
    if hit is None:
        def on_wait(holder: str) -> None:
            if ctx.on_progress is not None:
                ctx.on_progress(0, spec.train.steps, {"waiting for": holder})
            elif ctx.console is not None:
                ctx.console.print(f"waiting for {holder}, which is building {label}", highlight=False,
                                  soft_wrap=True)

        with ctx.cache.lock(key, on_wait=on_wait):
            hit = ctx.cache.get(key)  # the process we waited for has usually stored it by now
            if hit is None:
                if init is None:
                    raise RuntimeError(f"{label}: its cache entry disappeared while it was being read; run again")
                built = _train_and_store(spec, seed, ctx, payload, init, key, task, label)
    if hit is not None:
        from mechcheck.models import load_checkpoint
        from mechcheck.train_state import Checkpoint

        path, meta = hit
        # A run killed between storing the model and deleting its training state left that state behind.
        Checkpoint(ctx.cache.partial_dir(key)).clear()
        built = Built(load_checkpoint(str(path), local=True), key, spec.recipe, True, meta.get("info", {}), task,
                      (str(path), True, None))
        # The weights' hash lets two reports show whether they measured the very same model (cache keys say
        # "same recipe"; this says "same bits").
        built.info = {**built.info, "weights_sha256": meta["files"].get("model.safetensors")}
    ctx.memo[key] = built
    return built


def _train_and_store(spec, seed: int, ctx: BuildContext, payload: dict[str, Any], init, key: str, task: Task,
                     label: str) -> Built:
    """Train a fresh model (resuming a state a killed run saved), store it, and drop the resumable state."""
    from mechcheck.train import train
    from mechcheck.train_state import Checkpoint

    checkpoint = Checkpoint(ctx.cache.partial_dir(key), ctx.checkpoint_every, fingerprint=key)
    model = init()
    info = train(model, task, spec.train, seed, ctx.device, label=label, console=ctx.console,
                 threads=ctx.train_threads, checkpoint=checkpoint, progress=ctx.on_progress)
    model.to("cpu")
    ctx.cache.put(key, model, payload, info)
    hit = ctx.cache.get(key)
    if hit is None:
        raise RuntimeError(f"{label}: the model just stored under {ctx.cache.entry(key)} does not verify; "
                           "check the disk (full? failing?) and run again")
    checkpoint.clear()  # only now: until the entry is in place, the state is what a rerun would resume
    path, meta = hit
    return Built(model, key, spec.recipe, False, {**info, "weights_sha256": meta["files"].get("model.safetensors")},
                 task, (str(path), True, None))


def _random_init(spec, seed: int):
    def init():
        import torch

        from mechcheck.models import build_gpt2

        task = make_task(spec.task)
        torch.manual_seed(seed)
        arch = dict(spec.architecture or {})
        vocab = arch.pop("vocab_size", None) or task.vocab_size
        if vocab < task.vocab_size:
            raise ValueError(f"fixture {spec.name!r}: architecture.vocab_size {vocab} is smaller than the "
                             f"{task.vocab_size} token ids of task {spec.task.name!r}")
        # +2 positions: the answer token appended for next-token training, and one spare.
        return build_gpt2(arch, vocab, task.seq_len + 2)

    return init


def _scratch_payload(spec, seed: int, ctx: BuildContext) -> dict[str, Any]:
    if spec.parent is not None:  # a twin: the parent's config, fresh weights
        return _trained({"recipe": "scratch", "from": _key(spec.parent, 0, ctx), "task": task_payload(spec.task),
                         "train": train_payload(spec.train), "seed": seed}, ctx)
    return _trained({"recipe": spec.recipe, "architecture": dict(spec.architecture or {}),
                     "task": task_payload(spec.task), "train": train_payload(spec.train), "seed": seed}, ctx)


@RECIPES.register("scratch", doc="train from random weights (a GPT-2 shape, or a parent fixture's config) on a task",
                  payload=_scratch_payload)
def build_scratch(spec, seed: int, ctx: BuildContext) -> Built:
    if spec.parent is not None:
        return _build_twin(spec, seed, ctx)
    return _train_and_cache(spec, seed, ctx, _scratch_payload(spec, seed, ctx), _random_init(spec, seed))


def _build_twin(spec, seed: int, ctx: BuildContext) -> Built:
    """`scratch` with `from`: the parent's config (any architecture) with fresh random weights, then trained.

    The parent is built as replicate 0 (every replicate has the same config; for a `load` parent it is
    the one replicate); its key is part of this fixture's key, so a different parent config rebuilds.
    """
    payload = _scratch_payload(spec, seed, ctx)
    if cache_key(payload) in ctx.memo:
        return ctx.memo[cache_key(payload)]
    parent = build_model(spec.parent, 0, ctx)
    task = make_task(spec.task)
    _check_vocab(spec, task, parent.model.config.vocab_size)

    def init():
        import copy

        import torch

        config = copy.deepcopy(parent.model.config)
        config._attn_implementation = "eager"
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return type(parent.model)(config)

    built = _train_and_cache(spec, seed, ctx, payload, init)
    built.info.setdefault("config_from", spec.parent.name)
    return built


def _check_vocab(spec, task: Task, vocab: int) -> None:
    if task.vocab_size > vocab:
        raise ValueError(f"fixture {spec.name!r}: task {spec.task.name!r} needs {task.vocab_size} tokens but parent "
                         f"{spec.parent.name!r} has a vocabulary of {vocab}")


@RECIPES.register("pretrain", doc="train from random weights with next-token loss on every position of a task",
                  payload=_scratch_payload)
def build_pretrain(spec, seed: int, ctx: BuildContext) -> Built:
    return _train_and_cache(spec, seed, ctx, _scratch_payload(spec, seed, ctx), _random_init(spec, seed))


def _finetune_payload(spec, seed: int, ctx: BuildContext) -> dict[str, Any]:
    return _trained({"recipe": "finetune", "parent": _key(spec.parent, seed, ctx),
                     "task": task_payload(spec.task), "train": train_payload(spec.train), "seed": seed}, ctx)


def _seed(spec, seed: int) -> int:
    return spec.seed if getattr(spec, "seed", None) is not None else seed


@RECIPES.register("finetune", doc="continue training a parent fixture's weights on a task", payload=_finetune_payload)
def build_finetune(spec, seed: int, ctx: BuildContext) -> Built:
    payload = _finetune_payload(spec, seed, ctx)
    if cache_key(payload) in ctx.memo:
        return ctx.memo[cache_key(payload)]
    if ctx.cache.get(cache_key(payload)) is not None:  # cached: the parent need not be built at all
        return _train_and_cache(spec, seed, ctx, payload, None)
    parent = build_model(spec.parent, seed, ctx)
    task = make_task(spec.task)
    _check_vocab(spec, task, parent.model.config.vocab_size)
    built = _train_and_cache(spec, seed, ctx, payload, parent.pristine_copy)
    built.info.setdefault("parent", spec.parent.name)
    return built


# The `load` recipe lives in its own module (checkpoints: paths, fingerprints, hub ids); importing it registers it.
import mechcheck.loading  # noqa: E402, F401
