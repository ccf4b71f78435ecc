"""Interventions: read, ablate, patch and mask the activations of a Hugging Face model at canonical sites.

Every experiment runs its forward passes through this package. A *site* is a TransformerLens hook name
(``blocks.3.attn.hook_z``); a *hook function* is ``fn(activation, hook) -> activation | None``; `hooks` scopes
them to a block of code and always removes them. On top of that:

- `Ablate`, `Patch`, `Mask`, `Read`: interventions as plain objects (zero / mean / resample ablation with a
  reference set, activation and cross-model patching from per-example sources, fixed or learnable masks,
  capture at the answer position, every position, or a position-specific mean with padding left out);
- `run(model, batch, interventions, read=sites)`: one batched entry point returning per-example arrays;
- `ablation_sweep`: exact ablation (or activation patching) of many heads or head sets, each run only from its
  lowest layer up, from the clean run's kept block inputs.

The model's weights are never changed: interventions live in hooks, outside the module's parameters.
"""

from mechcheck.interventions.edits import Ablate, Mask, Patch, Read, Reference
from mechcheck.interventions.hooks import Forward, HookPoint, hooks
from mechcheck.interventions.run import RunOutput, forward, reference, run, valid_positions
from mechcheck.interventions.sites import Site, adapter_for, shape_of_config
from mechcheck.interventions.sweep import Job, SweepResult, ablation_sweep

__all__ = [
    "Ablate", "Forward", "HookPoint", "Job", "Mask", "Patch", "Read", "Reference", "RunOutput", "Site",
    "SweepResult", "ablation_sweep", "adapter_for", "forward", "hooks", "reference", "run", "shape_of_config",
    "valid_positions",
]
