"""Build, load and prepare models: Hugging Face modules, intervened on through `mechcheck.interventions`.

Weights always live in a plain Hugging Face module: trained, cached and loaded as such, and intervened on by
hooks on its own modules at TransformerLens' canonical site names (``blocks.{L}.attn.hook_z`` is
``[batch, pos, head, d_head]``). The TransformerLens bridge (`bridge`) stays available, on a copy of the model
(it rebuilds the module tree in place), as the reference implementation the tests compare with. Checkpoints
are read from safetensors only: a directory whose weights exist only as pickles (``pytorch_model.bin``,
``*.pt``) is refused, because unpickling runs code.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mechcheck.errors import ClaimSkipped

__all__ = [
    "Handle",
    "CheckpointError",
    "choose_device",
    "build_gpt2",
    "prepare",
    "bridge",
    "load_checkpoint",
    "hub_reachable",
    "resolve_local_or_hub",
    "pin_mkl_threads",
    "answer_logits",
]

#: GPT2Config fields a fixture's `architecture` may set (besides `type`).
GPT2_FIELDS = ("n_layer", "n_head", "n_embd", "n_positions", "n_inner", "activation_function", "resid_pdrop",
               "embd_pdrop", "attn_pdrop", "layer_norm_epsilon", "tie_word_embeddings")


class CheckpointError(ValueError):
    """A checkpoint directory that is missing, not a model, or only available as unsafe pickles."""


@dataclass
class Handle:
    """A model ready for interventions: the Hugging Face module (eval mode, on `device`) and its sites' adapter.

    The module is used as it is: interventions hook its own modules (`mechcheck.interventions`), so nothing
    is rebuilt or copied, and the weights stay the bits the cache holds.
    """

    hf: Any  # transformers.PreTrainedModel
    adapter: Any  # mechcheck.interventions.sites.Adapter
    dims: dict[str, int]
    device: str

    @property
    def n_layers(self) -> int:
        return self.dims["n_layers"]

    @property
    def n_heads(self) -> int:
        return self.dims["n_heads"]

    @property
    def d_head(self) -> int:
        return self.dims["d_head"]


def prepare(hf_model, device: str) -> Handle:
    """`hf_model` on `device`, in eval mode, as a `Handle` (nothing about the module is changed but that)."""
    from mechcheck.interventions.sites import adapter_for

    adapter = adapter_for(hf_model)
    if getattr(hf_model.config, "_attn_implementation", None) != "eager":
        hf_model.config._attn_implementation = "eager"  # fused kernels return no attention weights
    hf_model.to(device).eval()
    return Handle(hf_model, adapter, adapter.dims(hf_model), device)


def pin_mkl_threads() -> None:
    """Turn off MKL's dynamic threading (MKL's default is on), so MKL always uses the threads torch asks for.

    Measured here: with it on, merely running a subprocess before two-threaded training changed the trained
    weights of the ci fixture. Turning it off removed that case but not every run-to-run difference of
    multi-threaded training, which is why training defaults to one thread (see `mechcheck.train`).
    Idempotent; a no-op for builds of torch without MKL.
    """
    import ctypes

    import torch

    os.environ.setdefault("MKL_DYNAMIC", "FALSE")  # for MKL copies loaded later (e.g. by numpy)
    lib = Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"
    try:
        ctypes.CDLL(str(lib)).MKL_Set_Dynamic(0)
    except (OSError, AttributeError):  # not an MKL build (or another platform): nothing to pin
        pass


def choose_device(requested: str | None = None) -> str:
    """'cuda' when present (or asked for), else 'cpu'; an explicit request that cannot be met is an error."""
    import torch

    if requested in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {requested}: CUDA is not available on this machine (use cpu or auto)")
    if requested not in ("cpu", "mps") and not requested.startswith("cuda"):
        raise ValueError(f"--device {requested!r}: expected auto, cpu, cuda or cuda:N")
    return requested


def build_gpt2(architecture: dict[str, Any], vocab_size: int, n_positions: int):
    """A randomly initialised `GPT2LMHeadModel` (eager attention, so patterns can be hooked).

    Dropout defaults to 0: fixtures are small models on synthetic tasks, where dropout only slows learning
    and makes training less reproducible. A fixture can still set it.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    fields = {k: v for k, v in architecture.items() if k in GPT2_FIELDS}
    fields.setdefault("n_positions", n_positions)
    for p in ("resid_pdrop", "embd_pdrop", "attn_pdrop"):
        fields.setdefault(p, 0.0)
    cfg = GPT2Config(vocab_size=vocab_size, bos_token_id=0, eos_token_id=0, **fields)
    cfg._attn_implementation = "eager"
    return GPT2LMHeadModel(cfg)


def bridge(hf_model, device: str = "cpu"):
    """A TransformerLens 4 bridge around a *copy* of `hf_model` (canonical hook names, eager attention).

    A copy, because building the bridge rebuilds the module tree in place (its state_dict keys change). Used as
    the reference implementation of the sites in tests, and for sites `mechcheck.interventions` does not cover.
    """
    import copy

    from transformer_lens.model_bridge.sources import build_bridge_from_module

    model = copy.deepcopy(hf_model)
    cfg = model.config
    # The module's own class: a checkpoint's config may name another (all-MiniLM says BertModel, loaded as
    # BertForMaskedLM), and the bridge needs the class that has the output head.
    arch = type(model).__name__
    cfg._attn_implementation = "eager"  # SDPA kernels do not expose attention patterns
    model.to(device).eval()
    return build_bridge_from_module(model, arch, hf_config=cfg)


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub can be reached (False at once when HF_HUB_OFFLINE is set)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_local_or_hub(name: str) -> tuple[str, bool]:
    """(location, is_local): an existing directory is local; anything else is taken as a hub id.

    A hub id is only returned when the hub is reachable or the id is already in the local HF cache;
    otherwise the claim is skipped with the reason.
    """
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser().resolve()), True
    if name.startswith((".", "/", "~")):
        raise CheckpointError(f"directory {name!r} does not exist")
    if hub_reachable():
        return name, False
    try:  # already downloaded once: usable offline
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(name, "config.json"), str):
            return name, True
    except Exception:  # noqa: BLE001 - any failure here just means "not cached"
        pass
    raise ClaimSkipped(f"{name!r} is a Hugging Face hub id, and the hub cannot be reached from this machine")


def _model_class(config):
    """The class to load `config` as: the one it names, with an LM head added when it names a bare encoder or
    decoder (e.g. all-MiniLM's `BertModel` -> `BertForMaskedLM`): answers are read from token logits."""
    import transformers
    from transformers.models.auto import modeling_auto as auto

    for arch in config.architectures or []:
        cls = getattr(transformers, arch, None)
        if cls is None:
            continue
        if arch == auto.MODEL_MAPPING_NAMES.get(config.model_type):  # the bare model, without a head
            masked = auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES.get(config.model_type)
            causal = auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(config.model_type)
            with_head = causal if causal and (getattr(config, "is_decoder", False) or not masked) else masked
            return getattr(transformers, with_head) if with_head else cls
        return cls
    return transformers.AutoModelForCausalLM


def check_checkpoint_dir(path: Path) -> None:
    """Raise `CheckpointError` unless `path` is a HF model directory with safetensors weights."""
    if not path.exists():
        raise CheckpointError(f"checkpoint directory {str(path)!r} does not exist")
    if not path.is_dir():
        raise CheckpointError(f"checkpoint path {str(path)!r} is not a directory")
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{str(path)!r} is not a Hugging Face model directory (no config.json)")
    if not any(path.glob("*.safetensors")):
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        hint = f" (found {', '.join(pickles)}: pickled weights are refused because loading them runs code)" if pickles else ""
        raise CheckpointError(f"{str(path)!r} has no *.safetensors weights{hint}")


def load_checkpoint(location: str, local: bool, revision: str | None = None, dtype: str | None = None):
    """Load a HF model from a local directory or a hub id, from safetensors only, with eager attention; `dtype`
    (float32 / float16 / bfloat16) casts the weights on load (default: as saved)."""
    from transformers import AutoConfig

    if local and Path(location).is_dir():
        check_checkpoint_dir(Path(location))
    import torch
    from transformers.utils import logging as hf_logging

    config = AutoConfig.from_pretrained(location, revision=revision, local_files_only=local)
    cls = _model_class(config)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the load report of a head added on purpose (below) is noise
    hf_logging.disable_progress_bar()
    # Weights missing from the checkpoint (an added head) are initialised randomly: seeded, so that one
    # checkpoint always loads as the same model (fine-tuned children's cache keys rely on it).
    fork = torch.random.fork_rng(devices=[])
    try:
        with fork:
            torch.manual_seed(0)
            model = cls.from_pretrained(location, config=config, revision=revision, use_safetensors=True,
                                        local_files_only=local, attn_implementation="eager",
                                        **({"dtype": getattr(torch, dtype)} if dtype else {}))
    except OSError as exc:
        raise CheckpointError(f"could not load {location!r} as a {cls.__name__}: {exc}") from exc
    finally:
        hf_logging.set_verbosity(verbosity)
    model.config.architectures = [type(model).__name__]
    return model


def answer_logits(model, tokens, answer_pos):
    """(B, V) logits at each row's `answer_pos` (tokens (B, T)), computing the output head there only.

    The head is most of the compute of a small model with a big vocabulary (MiniLM: 384 -> 30,522 at every
    position). Architectures `mechcheck.interventions` knows apply it to the gathered positions (the same code
    path as every experiment); others fall back to the full logits.
    """
    import torch

    from mechcheck.interventions.sites import adapter_for

    rows = torch.arange(tokens.shape[0], device=tokens.device)
    try:
        adapter = adapter_for(model)
    except ValueError:
        return model(tokens).logits[rows, answer_pos]
    hidden = adapter.base(model)(tokens, use_cache=False).last_hidden_state  # (B, T, d)
    return adapter.unembed(model, hidden[rows, answer_pos])
