"""Aligned paired batches for interventions on the entity-tracking task (Prakash et al. 2024).

Every function takes the arguments of an `entity_tracking` (or `entity_binding`) task - the `args` of its task
fixture, as a mapping - and returns prompts of exactly `n_boxes` boxes, so base and source prompts have the
same length and the same positions, and patching an activation from position p of one into position p of the
other is meaningful. Base and source prompts are valid prompts of `split` (each with its own answer).

  counterfactual   path patching's "noise" input: another context, queried at box (j + 1) mod n when the
                   base queries box j, with its query label replaced by a random letter
  positional       source queries another box position p_s != p_b; target = the base object at p_s
  object_value     source queries another position, and its answer is not among the base objects;
                   target = the source's answer
  box_label_value  source's query label is a base label other than the base query, in a box of the source at a
                   position differing from both the base query's and that label's base position;
                   target = the base object in the box with that label
  mean_reference   prompts whose query label is replaced by a random letter (any of the task's labels, so it
                   may or may not occur in the context): the reference set of position-specific means

`positional`, `object_value` and `box_label_value` are the desiderata of desiderata-based component masking:
if a group of heads carries the positional / object / label information, patching them from source into
base moves the base output to that desideratum's target. Because the source position differs from the base
one (and, for box labels, from the label's base position too), the three targets differ from the base
answer and from one another on every pair, so the desiderata tell the hypotheses apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from mechcheck.tasks import TaskBatch
from mechcheck.tasks.entity import Config, Row, batch_of, draw_row, split_rng

__all__ = ["PairedBatch", "counterfactual", "positional", "object_value", "box_label_value", "desiderata",
           "mean_reference", "config", "DESIDERATA"]

DESIDERATA = ("positional", "object_value", "box_label_value")
_ARGS = ("n_boxes", "n_objects", "n_labels", "eval_fraction", "form", "values", "tokenizer")
_SALT = {"counterfactual": 0xC1, "positional": 0xD1, "object_value": 0xD2, "box_label_value": 0xD3, "mean": 0xA1}


@dataclass
class PairedBatch:
    """Base and source prompts, aligned row by row, and what patching should make the base say.

    target:     (n,) token id of the desideratum's expected output (counterfactual: the base answer)
    target_idx: (n,) its index in `base.candidates`
    """

    kind: str
    base: TaskBatch
    source: TaskBatch
    target: np.ndarray
    target_idx: np.ndarray

    def __len__(self) -> int:
        return len(self.base)


def config(args: Mapping[str, Any]) -> Config:
    """A task's arguments (as in its fixture) as the `Config` the samplers use; the eval layout only."""
    form = args.get("form", "contains")
    if form not in ("contains", "holds", "assign"):
        raise ValueError(f"entity pairs: unknown form {form!r}")
    known = {k: args[k] for k in _ARGS if k in args and args[k] is not None}
    # train-only curriculum arguments do not matter: pairs always have exactly n_boxes boxes
    return Config(**{**known, "form": form})


def _finish(kind: str, cfg: Config, base: list[Row], source: list[Row], target_values: list[int]) -> PairedBatch:
    b = batch_of(cfg, base)
    idx = np.asarray(target_values, dtype=np.int64)
    return PairedBatch(kind, b, batch_of(cfg, source), np.asarray(b.candidates)[idx], idx)


def _fresh(cfg: Config, rng: np.random.Generator, split: str, base: Row, **constraints) -> Row:
    """A source row of `split` that is a different context from `base` (never the same prompt)."""
    while True:
        row = draw_row(cfg, rng, split, cfg.n_boxes, **constraints)
        if (row.values, row.labels) != (base.values, base.labels):
            return row


def _other_position(rng: np.random.Generator, n: int, exclude: set[int]) -> int:
    choices = [p for p in range(n) if p not in exclude]
    return int(choices[int(rng.integers(0, len(choices)))])


def counterfactual(args: Mapping[str, Any], n: int, seed: int, split: str = "eval") -> PairedBatch:
    """Path-patching pairs: base, and a noise prompt from another context queried at box (j + 1) mod n with a
    random query letter; `target` is the base answer (the noise prompt has none)."""
    cfg = config(args)
    rng = split_rng(split, seed, _SALT["counterfactual"])
    base, source = [], []
    for _ in range(n):
        b = draw_row(cfg, rng, split, cfg.n_boxes)
        s = _fresh(cfg, rng, split, b, query=(b.query + 1) % cfg.n_boxes)
        source.append(Row(s.values, s.labels, s.query, int(rng.integers(0, cfg.n_labels))))
        base.append(b)
    return _finish("counterfactual", cfg, base, source, [r.values[r.query] for r in base])


def positional(args: Mapping[str, Any], n: int, seed: int, split: str = "eval") -> PairedBatch:
    """Source queries another position p_s != p_b; target = the base object at p_s."""
    cfg = config(args)
    rng = split_rng(split, seed, _SALT["positional"])
    base, source, target = [], [], []
    for _ in range(n):
        b = draw_row(cfg, rng, split, cfg.n_boxes)
        p_s = _other_position(rng, cfg.n_boxes, {b.query})
        base.append(b)
        source.append(_fresh(cfg, rng, split, b, query=p_s))
        target.append(b.values[p_s])
    return _finish("positional", cfg, base, source, target)


def object_value(args: Mapping[str, Any], n: int, seed: int, split: str = "eval") -> PairedBatch:
    """Source queries another position and its answer is no base object; target = the source's answer."""
    cfg = config(args)
    rng = split_rng(split, seed, _SALT["object_value"])
    base, source, target = [], [], []
    for _ in range(n):
        b = draw_row(cfg, rng, split, cfg.n_boxes)
        s = _fresh(cfg, rng, split, b, query=_other_position(rng, cfg.n_boxes, {b.query}), avoid_value=b.values)
        base.append(b)
        source.append(s)
        target.append(s.values[s.query])
    return _finish("object_value", cfg, base, source, target)


def box_label_value(args: Mapping[str, Any], n: int, seed: int, split: str = "eval") -> PairedBatch:
    """Source's query label is a base label L != base query, at a source position differing from the base
    query's and from L's base position; target = the base object in box L."""
    cfg = config(args)
    if cfg.n_boxes < 3:
        raise ValueError("entity pairs: box_label_value needs n_boxes >= 3 (three distinct positions)")
    rng = split_rng(split, seed, _SALT["box_label_value"])
    base, source, target = [], [], []
    for _ in range(n):
        b = draw_row(cfg, rng, split, cfg.n_boxes)
        p_t = _other_position(rng, cfg.n_boxes, {b.query})  # the base box whose label the source asks for
        p_s = _other_position(rng, cfg.n_boxes, {b.query, p_t})
        label = b.labels[p_t]
        others = [x for x in range(cfg.n_labels) if x != label]
        rest = [int(x) for x in rng.choice(others, size=cfg.n_boxes - 1, replace=False)]
        base.append(b)
        source.append(_fresh(cfg, rng, split, b, query=p_s, labels=tuple(rest[:p_s] + [label] + rest[p_s:])))
        target.append(b.values[p_t])
    return _finish("box_label_value", cfg, base, source, target)


def desiderata(args: Mapping[str, Any], kind: str, n: int, seed: int, split: str = "eval") -> PairedBatch:
    """One of the three desiderata datasets by name (`DESIDERATA`)."""
    makers = {"positional": positional, "object_value": object_value, "box_label_value": box_label_value}
    if kind not in makers:
        raise ValueError(f"entity pairs: unknown desideratum {kind!r} (allowed: {', '.join(DESIDERATA)})")
    return makers[kind](args, n, seed, split)


def mean_reference(args: Mapping[str, Any], n: int, seed: int, split: str = "eval") -> TaskBatch:
    """Prompts whose query label is a random letter (the reference set for position-specific means).

    Their `target` is still the queried box's object and `prev_label_pos` is -1 where the random letter is
    not in the context; neither is meaningful as an answer: only the activations are used.
    """
    cfg = config(args)
    rng = split_rng(split, seed, _SALT["mean"])
    rows = []
    for _ in range(n):
        r = draw_row(cfg, rng, split, cfg.n_boxes)
        rows.append(Row(r.values, r.labels, r.query, int(rng.integers(0, cfg.n_labels))))
    return batch_of(cfg, rows)
