"""Rules that span sections of a claim: checks against the experiment they read, and indices against models.

- A check registered with ``experiments=(...)`` reads only those experiments' measurements; a claim whose
  experiment is not among them cannot be judged (a check without the keyword, e.g. a plugin's, reads any).
- A check argument declared ``Param(within="x")`` must be one of the values of the claim's experiment argument
  ``x`` after defaults (a decoding check's `variable` is one of the decoded `variables`); for a mapping, one of
  its names or the check argument's default (a check's eval set `task` is `data` or a name of `also`).
- Head and layer indices of a check (kinds `head`, `heads`, `layers`, an integer `layer`, an int with
  ``limit="heads"``, a ``top_<k>`` selector) must exist in the model its `model` argument names. At validation
  the shape is the one its fixture declares (`declared_shape`; unknown for a `load`); the runner calls
  `shape_errors` again with the built models' shapes before any experiment runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from mechcheck.errors import SpecError, nearest
from mechcheck.registry import CHECKS, EXPERIMENTS
from mechcheck.spec import CheckSpec, ClaimSpec, ExperimentSpec, ModelSpec
from mechcheck.spec.kinds import _SELECTOR_RE, _is_int
from mechcheck.spec.yaml import _F

__all__ = ["declared_shape", "declared_shapes", "shape_errors"]

Shape = tuple[int, int]  # (n_layers, n_heads)


def declared_shape(model: ModelSpec) -> Shape | None:
    """(n_layers, n_heads) that a model fixture declares, or None when only the built model can tell.

    `scratch` / `pretrain` with an `architecture`: its n_layer x n_head; `finetune`, and `scratch` with
    `from`: the parent's; `load` and plugin recipes: None.
    """
    while model is not None:
        if model.recipe in ("scratch", "pretrain") and model.architecture:
            return model.architecture["n_layer"], model.architecture["n_head"]
        if model.recipe not in ("scratch", "finetune"):
            return None
        model = model.parent  # the loader rejects `from` cycles, so this ends
    return None


def declared_shapes(claim: ClaimSpec) -> dict[str, Shape]:
    """The declared shape of every role of `claim` whose fixture declares one."""
    return {role: s for role, m in claim.models.items() if (s := declared_shape(m)) is not None}


def shape_errors(claim: ClaimSpec, shapes: Mapping[str, Shape]) -> list[SpecError]:
    """Every head / layer index of `claim`'s checks that does not exist in the model it names.

    `shapes`: role -> (n_layers, n_heads); a role left out is not checked. The runner passes the built models'
    shapes (a `load` is known only then); `load_claims` passes `declared_shapes(claim)`.
    """
    f = _F([], claim.file)
    check_shapes(f, claim.models, enumerate(claim.expect), shapes)
    return f.errors


# ---- used by the loader, with its error sink and the checks that validated -----------------------------

def check_experiment(f: _F, experiment: ExperimentSpec, line: int, checks: Iterable[tuple[int, CheckSpec]]) -> None:
    """Report checks that do not read `experiment` (written at `line`), and `within` values it lacks."""
    exp_params = {p.name for p in EXPERIMENTS.get(experiment.name).params}
    for i, check in checks:
        entry = CHECKS.get(check.name)
        path = f"expect[{i}].{check.name}"
        reads = entry.meta.get("experiments")
        if reads is not None and experiment.name not in reads:
            f.err(check.line, path, f"check '{check.name}' cannot judge experiment '{experiment.name}' (the claim's "
                  f"experiment, line {line}): it reads the measurements of {', '.join(reads)}")
            continue
        for p in entry.params:
            value = check.args.get(p.name)
            if p.within is None or value is None or p.within not in exp_params:
                continue
            pool = experiment.args.get(p.within, EXPERIMENTS.get(experiment.name).param(p.within).default)
            if pool is None:
                continue
            if isinstance(pool, Mapping):  # a mapping of named things (`also` sets): its names, and the default
                pool = [p.default, *pool]
            pool = pool if isinstance(pool, list) else [pool]
            for x in value if isinstance(value, list) else [value]:
                if x not in pool:
                    f.err(check.line_of(p.name), f"{path}.{p.name}", f"{x!r} is not one of the values of the "
                          f"experiment's `{p.within}` ({experiment.name}, line {line})", pool,
                          nearest(str(x), [str(y) for y in pool]))


def check_shapes(f: _F, models: Mapping[str, ModelSpec | None], checks: Iterable[tuple[int, CheckSpec]],
                 shapes: Mapping[str, Shape]) -> None:
    """Report each index of `checks` beyond the shape of the model its `model` argument names."""
    for i, check in checks:
        role = check.args.get("model")
        if check.name not in CHECKS or not isinstance(role, str) or role not in shapes:
            continue
        L, H = shapes[role]
        model = models.get(role)
        where = (f"model '{role}' ({f'fixture {model.name}: ' if model is not None else ''}{_count(L, 'layer')} x "
                 f"{_count(H, 'head')}: {_range(L, 'layer')}, {_range(H, 'head')})")
        path = f"expect[{i}].{check.name}"
        for p in CHECKS.get(check.name).params:
            v = check.args.get(p.name)
            if v is not None:
                _check_param(f, check, p.name, p.kind, p.limit, v, f"{path}.{p.name}", L, H, where)


def _check_param(f: _F, check: CheckSpec, name: str, kind: str, limit: str | None, v: Any, path: str, L: int,
                 H: int, where: str) -> None:
    """Report the indices in one argument value `v` that `L` layers x `H` heads do not have."""
    def head(h: Any, key: str, at: str) -> None:
        if isinstance(h, list) and len(h) == 2 and (h[0] >= L or h[1] >= H):
            f.err(check.line_of(key), at, f"head [{h[0]}, {h[1]}] does not exist in {where}")

    if kind == "head":
        head(v, name, path)
    elif kind == "heads" and isinstance(v, str):
        sel = _SELECTOR_RE.match(v)
        k = 1 if sel is None or sel.group(1) == "head" else int(sel.group(1))
        if k > L * H:
            f.err(check.line_of(name), path, f"'{v}' selects {k} heads, more than the {L * H} of {where}")
    elif kind == "heads":
        for j, h in enumerate(v):
            head(h, f"{name}[{j}]", f"{path}[{j}]")
    elif kind == "layers":
        for j, layer in enumerate(v):
            if _is_int(layer) and layer >= L:
                f.err(check.line_of(f"{name}[{j}]"), f"{path}[{j}]", f"layer {layer} does not exist in {where}")
    elif name == "layer" and kind in ("int", "choice") and _is_int(v) and v >= L:
        f.err(check.line_of(name), path, f"layer {v} does not exist in {where}")
    if limit == "heads" and _is_int(v) and v > L * H:
        f.err(check.line_of(name), path, f"{v} is more than the {L * H} heads of {where}")


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'s' if n != 1 else ''}"


def _range(n: int, what: str) -> str:
    return f"{what} 0" if n == 1 else f"{what}s 0..{n - 1}"
