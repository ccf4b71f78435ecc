"""The fixed sections of claim and fixture files: their keys, the fields of each (the registry's `Param` doubles
as a field declaration), and which model recipe requires or allows which field. The loader validates against
these; `mechcheck new` and the JSON Schema (`mechcheck.authoring`) are written from them."""

from __future__ import annotations

import re

from mechcheck.registry import Param

__all__ = ["ID_RE", "ROLE_RE", "FIXTURE_RE", "CLAIM_KEYS", "CLAIM_OVERLAY", "MODEL_KEYS", "MODEL_OVERLAY",
           "TASK_KEYS", "TASK_OVERLAY", "SOURCE_FIELDS", "DATA_FIELDS", "ARCH_FIELDS", "TRAIN_FIELDS", "TRAINED",
           "RECIPE_RULES"]

ID_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
ROLE_RE = re.compile(r"^[a-z][a-z0-9_]*$")
FIXTURE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # no "/": a name never leaves fixtures/<kind>/

CLAIM_KEYS = ("id", "statement", "source", "tags", "models", "data", "seeds", "experiment", "expect", "profiles")
CLAIM_OVERLAY = ("models", "data", "seeds", "experiment", "expect")
MODEL_KEYS = ("name", "description", "recipe", "architecture", "task", "train", "from", "path", "hub", "revision",
              "dtype", "adapter", "seed", "profiles")
MODEL_OVERLAY = tuple(k for k in MODEL_KEYS if k not in ("name", "recipe", "profiles"))
TASK_KEYS = ("name", "description", "generator", "args", "profiles")
TASK_OVERLAY = ("args", "description")

SOURCE_FIELDS = tuple(Param(k, "str") for k in ("paper", "arxiv", "section", "url", "notes"))
DATA_FIELDS = (Param("n", "int", default=512, min=1),
               Param("split", "choice", default="eval", choices=("eval", "train")),
               Param("seed", "int", default=0, min=0))
ARCH_FIELDS = (
    Param("type", "choice", default="gpt2", choices=("gpt2",)),
    *(Param(k, "int", required=True, min=1) for k in ("n_layer", "n_head", "n_embd")),
    Param("n_positions", "int", min=1), Param("n_inner", "int", min=1), Param("activation_function", "str"),
    *(Param(k, "float", min=0.0, max=1.0) for k in ("resid_pdrop", "embd_pdrop", "attn_pdrop")),
    Param("layer_norm_epsilon", "float", min=0.0), Param("tie_word_embeddings", "bool"),
    # a larger embedding than the task needs, e.g. to give a scratch model the vocabulary of its pretrained twin
    Param("vocab_size", "int", min=1),
)
TRAIN_FIELDS = (
    Param("steps", "int", required=True, min=1), Param("batch_size", "int", default=64, min=1),
    Param("lr", "float", default=1e-3, min=0.0), Param("weight_decay", "float", default=0.01, min=0.0),
    Param("warmup_steps", "int", default=0, min=0),
    Param("loss", "choice", choices=("answer", "lm")),  # default depends on the recipe
    Param("n_train", "int", min=1), Param("eval_every", "int", default=25, min=1),
    Param("grad_clip", "float", default=1.0, min=0.0),
    Param("hints", "mapping"),
    Param("stop_at", "float", min=0.0, max=1.0),
)
#: the recipes that train a model here (`load` loads one)
TRAINED = ("scratch", "pretrain", "finetune")
# field -> (recipes that require it, recipes that allow it); plugin recipes are left unconstrained
RECIPE_RULES = {
    # scratch: exactly one of `architecture` / `from` (a parent whose config is copied; checked below)
    "architecture": (("pretrain",), ("scratch", "pretrain")),
    "task": (TRAINED, (*TRAINED, "load")),
    "train": (TRAINED, TRAINED),
    "from": (("finetune",), ("finetune", "scratch")),
    "path": ((), ("load",)), "hub": ((), ("load",)), "revision": ((), ("load",)),
    "dtype": ((), ("load",)), "adapter": ((), ("load",)),
    "seed": ((), TRAINED),
}
