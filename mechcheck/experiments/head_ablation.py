"""Head ablation: how much does the model need each attention head?

For every layer L and head H, the head's output before the output projection (``blocks.{L}.attn.hook_z``,
``[batch, pos, head, d_head]``) is replaced, and the change of a per-example metric is recorded:

  zero ablation  z[:, :, H] := 0
  mean ablation  z[:, p, H] := mean over the eval set of z[:, p, H]   (position-specific, as in Prakash 2024)

`positions: answer` restricts the replacement to each example's answer position. Whole layers (all heads of
a layer at once) are ablated too, because single-head effects hide redundancy (NOTES.md: single heads cost
<= 1.4 pp where whole layers cost 24-46 pp). The clean run is computed once per model and also yields the
mean activations and the attention paid from the answer position to each token group.

Effects are exact (one forward pass per head; no attribution approximation). Per-example metrics:
  accuracy    1 when the correct candidate's logit is strictly larger than every other candidate's
              (a tie is not a decision, so it counts as wrong)
  logit_diff  correct logit minus the largest other candidate logit
An effect is clean minus ablated, so positive means "the model needed this head".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mechcheck.metrics import METRICS, answer_metrics
from mechcheck.experiments import ExperimentContext
from mechcheck.registry import EXPERIMENTS, Param
from mechcheck.tasks import TaskBatch

__all__ = ["head_ablation", "HeadAblationResult", "ExperimentContext", "forward_metrics", "hf_attention_patterns",
           "Heads"]

Heads = tuple[tuple[int, int], ...]


#: the unembedding's input: gathering the answer positions there skips the vocabulary projection of every
#: other position (most of the compute of a small model with a large vocabulary; identical values)
_ANSWER_ONLY = "unembed.hook_in"


def _batches(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def _tensors(batch: TaskBatch, sl: slice, device: str):
    import torch

    return (torch.as_tensor(batch.tokens[sl], device=device), torch.as_tensor(batch.answer_pos[sl], device=device),
            torch.as_tensor(batch.candidates, device=device), torch.as_tensor(batch.target[sl], device=device))


def _ablation_hooks(heads: Heads, method: str, positions: str, mean_z: dict[int, Any] | None, answer_pos):
    """Forward hooks that replace the outputs of `heads` (grouped by layer) at hook_z."""
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)
    hooks = []
    for layer, hs in sorted(by_layer.items()):
        def hook(z, hook, hs=hs, layer=layer):  # z: (B, T, H, d_head)
            z = z.clone()
            if positions == "all":
                z[:, :, hs, :] = 0.0 if method == "zero" else mean_z[layer][None, : z.shape[1], hs, :]
            else:
                rows = np.arange(z.shape[0])
                pos = answer_pos.cpu().numpy()
                for h in hs:
                    z[rows, pos, h, :] = 0.0 if method == "zero" else mean_z[layer][pos, h, :]
            return z

        hooks.append((f"blocks.{layer}.attn.hook_z", hook))
    return hooks


def forward_metrics(handle, batch: TaskBatch, heads: Heads = (), method: str = "zero", positions: str = "all",
                    mean_z: dict[int, Any] | None = None, batch_size: int = 500) -> dict[str, np.ndarray]:
    """Per-example metrics of `handle` on `batch` with `heads` ablated (none: the clean run)."""
    import torch

    out: dict[str, list[np.ndarray]] = {m: [] for m in METRICS}
    gather = _ANSWER_ONLY in handle.bridge.hook_dict
    with torch.no_grad():
        for sl in _batches(len(batch), batch_size):
            tokens, answer_pos, candidates, target = _tensors(batch, sl, handle.device)
            hooks = _ablation_hooks(heads, method, positions, mean_z, answer_pos) if heads else []
            if gather:  # unembed the answer position only: (B, 1, V) logits, read at position 0
                rows = torch.arange(tokens.shape[0], device=tokens.device)
                hooks.append((_ANSWER_ONLY, lambda x, hook, rows=rows, pos=answer_pos: x[rows, pos][:, None, :]))
            logits = handle.bridge.run_with_hooks(tokens, fwd_hooks=hooks) if hooks else handle.bridge(tokens)
            read_at = torch.zeros_like(answer_pos) if gather else answer_pos
            for m, v in answer_metrics(logits, read_at, candidates, target).items():
                out[m].append(v)
    return {m: np.concatenate(v) for m, v in out.items()}


@dataclass
class _Replicate:
    """Everything measured on one replicate of one role."""

    handle: Any
    clean: dict[str, np.ndarray]  # metric -> (n,)
    head_effect: dict[str, np.ndarray]  # metric -> (n, L, H)
    layer_effect: dict[str, np.ndarray]  # metric -> (n, L)
    attention: dict[str, np.ndarray]  # token group -> (n, L, H)
    mean_z: dict[int, Any]
    joint: dict[Heads, dict[str, np.ndarray]] = field(default_factory=dict)


def _clean_run(handle, batch: TaskBatch, batch_size: int):
    """Clean metrics, per-position mean of hook_z over the batch, and attention shares from the answer position."""
    import torch

    L = handle.n_layers
    names = {f"blocks.{layer}.attn.hook_z" for layer in range(L)} | {f"blocks.{layer}.attn.hook_pattern" for layer in range(L)}
    hooked = all(n in handle.bridge.hook_dict for n in names)  # else: patterns from the HF model
    z_sum = {layer: None for layer in range(L)}
    clean: dict[str, list[np.ndarray]] = {m: [] for m in METRICS}
    attention: dict[str, list[np.ndarray]] = {g: [] for g in batch.groups}
    with torch.no_grad():
        for sl in _batches(len(batch), batch_size):
            tokens, answer_pos, candidates, target = _tensors(batch, sl, handle.device)
            logits, cache = handle.bridge.run_with_cache(tokens, names_filter=lambda n: n in names)
            hf_patterns = None if hooked else hf_attention_patterns(handle, tokens)
            for m, v in answer_metrics(logits, answer_pos, candidates, target).items():
                clean[m].append(v)
            rows = torch.arange(tokens.shape[0], device=tokens.device)
            per_layer = []
            for layer in range(L):
                z = cache[f"blocks.{layer}.attn.hook_z"].double().sum(0)  # (T, H, d_head)
                z_sum[layer] = z if z_sum[layer] is None else z_sum[layer] + z
                pattern = cache[f"blocks.{layer}.attn.hook_pattern"] if hooked else hf_patterns[layer]  # (B, H, Tq, Tk)
                per_layer.append(pattern[rows, :, answer_pos, :])  # (B, H, Tk)
            att = torch.stack(per_layer, dim=1).float()  # (B, L, H, Tk)
            for g, mask in batch.groups.items():
                m = torch.as_tensor(mask[sl], device=att.device, dtype=att.dtype)[:, None, None, :]
                attention[g].append((att * m).sum(-1).cpu().numpy())
    mean_z = {layer: (z_sum[layer] / len(batch)).to(torch.float32) for layer in range(L)}
    return ({m: np.concatenate(v) for m, v in clean.items()}, mean_z,
            {g: np.concatenate(v) for g, v in attention.items()})


def hf_attention_patterns(handle, tokens) -> list[Any]:
    """Per layer (B, H, Tq, Tk) attention patterns from the HF model (`output_attentions`, eager attention),
    for bridges without ``hook_pattern``."""
    L = handle.n_layers
    attentions = handle.hf(tokens, output_attentions=True).attentions
    # Once the bridge wraps the attention modules, HF's recorder can catch each layer's weights k times in a
    # row (k = 3 for BERT under transformer-lens 4.3): keep one of each run.
    if not attentions or len(attentions) % L:
        raise RuntimeError(f"{type(handle.hf).__name__}: got {len(attentions or ())} attention patterns for {L} layers")
    return list(attentions[:: len(attentions) // L])


class HeadAblationResult:
    """Per role and replicate: clean metrics, single-head and whole-layer effects, attention shares.

    `joint_effect` runs further ablations on demand (memoised), for checks about sets of heads.
    """

    def __init__(self, args: dict[str, Any], batch: TaskBatch, fixtures: dict[str, str],
                 runs: dict[str, list[_Replicate]]) -> None:
        self.args, self.batch, self.fixtures, self.runs = args, batch, fixtures, runs

    @property
    def metric(self) -> str:
        return self.args["metric"]

    def shape(self, role: str) -> tuple[int, int]:
        h = self.runs[role][0].handle
        return h.n_layers, h.n_heads

    def n_replicates(self, role: str) -> int:
        return len(self.runs[role])

    def clean(self, role: str, metric: str) -> list[np.ndarray]:
        return [r.clean[metric] for r in self.runs[role]]

    def head_effects(self, role: str, metric: str) -> list[np.ndarray]:
        """Per replicate, (n, L, H) per-example effect of ablating each head alone."""
        return [r.head_effect[metric] for r in self.runs[role]]

    def layer_effects(self, role: str, metric: str) -> list[np.ndarray]:
        return [r.layer_effect[metric] for r in self.runs[role]]

    def attention(self, role: str, group: str) -> list[np.ndarray]:
        """Per replicate, (n, L, H) share of attention from the answer position to `group`."""
        return [r.attention[group] for r in self.runs[role]]

    def joint_effect(self, role: str, replicate: int, heads: Heads, metric: str) -> np.ndarray:
        """(n,) per-example effect of ablating all of `heads` together in one replicate."""
        run = self.runs[role][replicate]
        key = tuple(sorted(set(heads)))
        if key not in run.joint:
            ablated = forward_metrics(run.handle, self.batch, key, self.args["method"], self.args["positions"],
                                      run.mean_z, self.args["batch_size"])
            run.joint[key] = {m: run.clean[m] - ablated[m] for m in METRICS}
        return run.joint[key][metric]

    def summary(self) -> dict[str, Any]:
        """JSON-able summary for the report (seed-level means; per-example arrays stay out of the JSON)."""
        models = {}
        for role, runs in self.runs.items():
            L, H = self.shape(role)
            metric = self.metric
            models[role] = {
                "fixture": self.fixtures.get(role, role),
                "n_layers": L,
                "n_heads": H,
                "metric": metric,
                "clean": {m: [float(r.clean[m].mean()) for r in runs] for m in METRICS},
                "head_effect": [np.round(r.head_effect[metric].mean(0), 5).tolist() for r in runs],
                "layer_effect": [np.round(r.layer_effect[metric].mean(0), 5).tolist() for r in runs],
                "attention": {g: [np.round(r.attention[g].mean(0), 4).tolist() for r in runs]
                              for g in self.batch.groups},
            }
        return {"name": "head_ablation", "args": dict(self.args), "n": len(self.batch), "models": models}


@EXPERIMENTS.register("head_ablation", params=(
    Param("method", "choice", default="mean", choices=("zero", "mean"),
          doc="replace the head's output (hook_z) by 0 or by its mean over the eval set, per position"),
    Param("metric", "choice", default="accuracy", choices=METRICS,
          doc="primary per-example metric (both are recorded)"),
    Param("positions", "choice", default="all", choices=("all", "answer"),
          doc="ablate at every position, or only at the answer position"),
    Param("batch_size", "int", default=500, min=1, doc="examples per forward pass"),
    Param("n_control", "int", default=10, min=1, doc="random head sets drawn for matched controls"),
))
def head_ablation(ctx: ExperimentContext, method: str = "mean", metric: str = "accuracy", positions: str = "all",
                  batch_size: int = 500, n_control: int = 10) -> HeadAblationResult:
    """Ablate every head, and every whole layer, one at a time; record the per-example change of the metric."""
    from mechcheck.progress import progress_bar

    args = {"method": method, "metric": metric, "positions": positions, "batch_size": batch_size,
            "n_control": n_control}
    batch = ctx.batch
    runs: dict[str, list[_Replicate]] = {}
    total = sum(len(hs) * (h.n_layers * h.n_heads + h.n_layers + 1) for hs in ctx.models.values() for h in hs[:1])
    console = ctx.console
    progress = progress_bar(console)
    with progress:
        bar = progress.add_task("head ablation", total=total)
        for role, handles in ctx.models.items():
            runs[role] = []
            for i, handle in enumerate(handles):
                progress.update(bar, description=f"head ablation: {role} (replicate {i + 1}/{len(handles)})")
                clean, mean_z, attention = _clean_run(handle, batch, batch_size)
                progress.advance(bar)
                L, H = handle.n_layers, handle.n_heads
                head_eff = {m: np.zeros((len(batch), L, H), dtype=np.float32) for m in METRICS}
                layer_eff = {m: np.zeros((len(batch), L), dtype=np.float32) for m in METRICS}
                for layer in range(L):
                    for head in range(H):
                        ablated = forward_metrics(handle, batch, ((layer, head),), method, positions, mean_z, batch_size)
                        for m in METRICS:
                            head_eff[m][:, layer, head] = clean[m] - ablated[m]
                        progress.advance(bar)
                    ablated = forward_metrics(handle, batch, tuple((layer, h) for h in range(H)), method, positions,
                                              mean_z, batch_size)
                    for m in METRICS:
                        layer_eff[m][:, layer] = clean[m] - ablated[m]
                    progress.advance(bar)
                runs[role].append(_Replicate(handle, clean, head_eff, layer_eff, attention, mean_z))
    return HeadAblationResult(args, batch, dict(ctx.fixtures), runs)
