"""Interventions: read, ablate, patch and mask the activations of a Hugging Face model at canonical sites.

Every experiment runs its forward passes through this package. A *site* is a TransformerLens hook name
(``blocks.3.attn.hook_z``); a *hook function* is ``fn(activation, hook) -> activation | None``; `hooks` scopes
them to a block of code and always removes them. On top of that:

- `Ablate`, `Patch`, `Mask`, `Read`: interventions as plain objects (zero / mean / resample ablation with a
  reference set, activation and cross-model patching from per-example sources, fixed or learnable masks,
  capture at the answer position, every position, or a position-specific mean with padding left out);
  `At(pos)` is one position per example, and `Put` writes given values there;
- `run(model, batch, interventions, read=sites)`: one batched entry point returning per-example arrays;
- `ablation_sweep`: exact ablation (or activation patching) of many heads or head sets, each run only from its
  lowest layer up, from the clean run's kept block inputs;
- `Circuit`, `keep_only`, `faithfulness`, `random_circuits`: groups of heads at per-example positions, the
  model with only them left (every other head output at its position-specific mean), and its null;
- `cmap`: cross-model activation patching of a circuit's head outputs (or q / k / v inputs);
- `path_patching`: a sender head's effect on receiver heads' q / k / v inputs, all other heads frozen;
- `discover_circuit`: groups of heads found from the logits backwards by iterative path patching;
  `minimal_circuit` / `completeness`: the minimality rule and the completeness comparison;
- `neuron_scores`, `prune`, `pruning_curve`: neurons (output units of the blocks' weight matrices) ranked by
  gradient x weight on a task, pruned for the duration of a with-block, and the accuracy after pruning the top K;
- `block_probes`: a linear probe per block of the residual stream at the answer position, with a shuffled-label
  and an untrained-model null.

Interventions live in hooks, outside the module's parameters, so the model's weights are never changed; the one
exception is `prune`, which zeroes weights inside its with-block and restores them bit for bit on exit.
"""

from mechcheck.interventions.circuits import (
    Circuit, Faithfulness, Group, KeepOnly, circuit_accuracy, circuit_reference, faithfulness, keep_only,
    positions_of, random_circuits,
)
from mechcheck.interventions.cmap import cmap, cmap_edits
from mechcheck.interventions.discovery import Discovery, Step, discover_circuit
from mechcheck.interventions.minimality import Minimality, completeness, minimal_circuit
from mechcheck.interventions.edits import Ablate, At, Mask, Patch, Put, Read, Reference
from mechcheck.interventions.paths import PathResult, path_patching
from mechcheck.interventions.hooks import Forward, HookPoint, hooks
from mechcheck.interventions.run import RunOutput, forward, reference, run, valid_positions
from mechcheck.interventions.sites import Site, adapter_for, shape_of_config
from mechcheck.interventions.sweep import Job, SweepResult, ablation_sweep
from mechcheck.interventions.probes import ProbeResult, block_probes, block_reads, untrained_like
from mechcheck.interventions.pruning import (
    Neuron, NeuronScores, PruningCurve, candidate_neurons, neuron_scores, prune, pruning_curve, random_neurons,
)

__all__ = [
    "Ablate", "At", "Circuit", "Discovery", "Step", "discover_circuit", "Minimality", "completeness", "minimal_circuit", "Faithfulness", "Forward", "Group", "HookPoint", "Job", "KeepOnly", "Mask", "Patch",
    "PathResult", "Put", "Read", "Reference", "RunOutput", "Site", "SweepResult", "ablation_sweep", "adapter_for",
    "circuit_accuracy", "circuit_reference", "cmap", "cmap_edits", "faithfulness", "forward", "hooks", "keep_only",
    "path_patching", "positions_of", "random_circuits", "reference", "run", "shape_of_config", "valid_positions",
    "Neuron", "NeuronScores", "PruningCurve", "candidate_neurons", "neuron_scores", "prune", "pruning_curve",
    "random_neurons", "ProbeResult", "block_probes", "block_reads", "untrained_like",
]
