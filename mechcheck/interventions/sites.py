"""Sites: where an intervention reads or writes, by TransformerLens' canonical names, in each architecture.

A site is named as TransformerLens names its hook points, so a claim, a report and a TransformerLens notebook
speak of the same activation:

  blocks.{L}.attn.hook_z        (B, T, H, d_head)  each head's output before the output projection W_O
  blocks.{L}.attn.hook_pattern  (B, H, Tq, Tk)     attention probabilities (read only)
  blocks.{L}.attn.o.hook_out    (B, T, d_model)    attention output after W_O (and b_O), before the residual add
                                                   (alias: blocks.{L}.hook_attn_out)
  blocks.{L}.hook_resid_pre     (B, T, d_model)    the residual stream entering block L
  blocks.{L}.hook_resid_mid     (B, T, d_model)    after attention's residual add (pre-LN GPT-2 only; read only)
  blocks.{L}.hook_resid_post    (B, T, d_model)    the residual stream leaving block L
  blocks.{L}.mlp.hook_post      (B, T, d_mlp)      MLP neurons, after the nonlinearity
  blocks.{L}.attn.hook_q_input  (B, T, H, d_model) the residual stream each head's query is computed from
  (and hook_k_input, hook_v_input)                 (before GPT-2's ln_1, as in TransformerLens): patching
                                                   it for one head changes only that head's q (k, v)

Each architecture's `Adapter` says which Hugging Face module holds each site and how to run the model from
a block on, so interventions hook the Hugging Face modules directly (no reimplementation of the model, and no
wrapper in between: the TransformerLens bridge rebuilds the module tree in place and costs ~1.2x per forward).
The known quirks live here and nowhere else:

- GPT-2 is pre-LN: ``hook_resid_mid`` is the input of ``ln_2``; the final ``ln_f`` follows the last block.
  Because attention's output is added to the residual stream outside any norm, a sweep may take shortcuts
  that are exact up to float rounding (`Adapter.shortcuts`): a change of some heads' ``hook_z`` changes the
  residual after attention by that change times those heads' rows of W_O (the other heads' attention is
  untouched), and a last block whose only needed output is the answer position needs every position's keys
  and values but only that position's query, W_O and MLP.
- BERT is post-LN: the attention output after W_O (``attention.output.dense``) is added to the block input
  *inside* a LayerNorm, so ``attn.o.hook_out`` is that dense output before the add-and-norm, and a block's
  ``hook_resid_post`` is its LayerNorm'd output. BERT has no ``hook_resid_mid`` and no final norm; it reads the
  whole padded prompt in both directions, so it gets an attention mask of the non-pad prefix.
- all-MiniLM-style checkpoints name the bare `BertModel`; `models.load_checkpoint` loads them with their MLM head.
- Llama-style decoders (Llama, Mistral, Qwen2) are pre-RMSNorm with separate q / k / v / o projections; rotary
  positions are applied *after* q_proj / k_proj, so a patched q or k input is rotated like the model's own.
  Their MLP is gated: the neurons (``mlp.hook_post``) are act(gate) * up, the *input* of ``down_proj``. With
  grouped-query attention a k / v input belongs to a key-value head shared by several query heads: patching one
  query head's k / v input changes that shared head (Llama-7B has none: one key-value head per query head).
  No sweep shortcuts (whole blocks run from the ablated layer up).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

__all__ = ["Site", "Adapter", "adapter_for", "SITE_FORMS", "shape_of_config"]

#: suffix after ``blocks.{L}.`` -> site kind
_SUFFIX_KIND = {
    "attn.hook_z": "z",
    "attn.hook_pattern": "pattern",
    "attn.o.hook_out": "attn_out",
    "hook_attn_out": "attn_out",
    "hook_resid_pre": "resid_pre",
    "hook_resid_mid": "resid_mid",
    "hook_resid_post": "resid_post",
    "mlp.hook_post": "mlp_post",
    "attn.hook_q_input": "q_input",
    "attn.hook_k_input": "k_input",
    "attn.hook_v_input": "v_input",
}
_KIND_SUFFIX = {"z": "attn.hook_z", "pattern": "attn.hook_pattern", "attn_out": "attn.o.hook_out",
                "resid_pre": "hook_resid_pre", "resid_mid": "hook_resid_mid", "resid_post": "hook_resid_post",
                "mlp_post": "mlp.hook_post", "q_input": "attn.hook_q_input", "k_input": "attn.hook_k_input",
                "v_input": "attn.hook_v_input"}
SITE_FORMS = tuple(f"blocks.{{L}}.{s}" for s in _SUFFIX_KIND)
_SITE_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")
#: sites whose value can only be read (writing them would need the model's own code to be redone)
READ_ONLY = ("pattern", "resid_mid")


@dataclass(frozen=True)
class Site:
    """One activation of one layer: ``Site(3, "z")`` is ``blocks.3.attn.hook_z``."""

    layer: int
    kind: str

    def __post_init__(self) -> None:
        if self.kind not in _KIND_SUFFIX:
            raise ValueError(f"unknown site kind {self.kind!r} (allowed: {', '.join(_KIND_SUFFIX)})")
        if self.layer < 0:
            raise ValueError(f"site layer must be >= 0, got {self.layer}")

    @property
    def name(self) -> str:
        return f"blocks.{self.layer}.{_KIND_SUFFIX[self.kind]}"

    def __str__(self) -> str:
        return self.name

    @classmethod
    def parse(cls, name: str | Site) -> Site:
        """The site a canonical name denotes; ValueError naming the allowed forms otherwise."""
        if isinstance(name, Site):
            return name
        m = _SITE_RE.match(str(name))
        if not m or m.group(2) not in _SUFFIX_KIND:
            raise ValueError(f"unknown site {name!r} (allowed forms: {', '.join(SITE_FORMS)})")
        return cls(int(m.group(1)), _SUFFIX_KIND[m.group(2)])


def shape_of_config(config: Any) -> tuple[int, int]:
    """(n_layers, n_heads) from a Hugging Face config object or its dict (config.json), without a model."""
    get = config.get if isinstance(config, dict) else lambda k, d=None: getattr(config, k, d)
    for layers, heads in (("n_layer", "n_head"), ("num_hidden_layers", "num_attention_heads")):
        if get(layers) is not None and get(heads) is not None:
            return int(get(layers)), int(get(heads))
    raise ValueError("config has neither n_layer/n_head nor num_hidden_layers/num_attention_heads")


class Adapter:
    """Where the sites of one Hugging Face architecture live, and how to run it from a block on.

    Subclasses name the modules; everything that runs the model calls the Hugging Face modules themselves.
    """

    #: Hugging Face classes this adapter handles
    classes: tuple[str, ...] = ()
    #: whether every position attends to every other (then padding must be masked out)
    bidirectional = False
    #: whether `mlp_act` names the module whose *input* holds the MLP neurons (gated MLPs: act(gate) * up enters
    #: the down projection) rather than the activation function whose output does
    mlp_post_is_input = False

    def base(self, model):  # the model without its output head (returns last_hidden_state)
        raise NotImplementedError

    def blocks(self, model):
        raise NotImplementedError

    def final_norm(self, model, hidden):
        """What the base model applies after its last block (GPT-2's ln_f; BERT: nothing)."""
        return hidden

    def unembed(self, model, hidden):
        """Output-head logits of hidden states (..., d_model) -> (..., vocab)."""
        raise NotImplementedError

    def w_o(self, model, layer: int):
        """The output projection whose *input* is ``hook_z`` (heads concatenated) and whose output is attn_out."""
        raise NotImplementedError

    def attention(self, model, layer: int):
        """The module whose output is ``(attn_output, attn_weights)``."""
        raise NotImplementedError

    def mlp_act(self, model, layer: int):
        raise NotImplementedError

    def resid_mid_module(self, model, layer: int):
        raise ValueError(f"{type(self).__name__}: this architecture has no hook_resid_mid")

    def unembed_ids(self, model, hidden, ids):
        """Output-head logits of `ids` only: hidden (..., d_model) -> (..., len(ids)) (the rest is not needed)."""
        return self.unembed(model, hidden)[..., ids]

    # ---- the sweep's shortcuts (`interventions.sweep`); architectures without them run whole blocks ----------

    def shortcuts(self, model) -> bool:
        """Whether `head_write`, `after_attention` and `block_at` are exact for this model (pre-LN models)."""
        return False

    def head_write(self, model, layer: int, dz, heads):
        """The change of the attention output (..., d_model) when `heads`' z change by dz (..., len(heads), d_head)."""
        raise NotImplementedError

    def after_attention(self, model, layer: int, resid_mid):
        """Block `layer`'s output from its residual stream after attention (..., d_model): the MLP half."""
        raise NotImplementedError

    def block_at(self, model, layer: int, x, pos, args: tuple, kwargs: dict):
        """Block `layer`'s output (B, d_model) at one position per row `pos` (B,), from its input x (B, T, d_model)
        and the other arguments the model passed it (`args`, `kwargs`)."""
        raise NotImplementedError

    def qkv(self, model, layer: int, which: str) -> QKV:
        """Where the residual input of the attention's q, k or v (`which`) enters, and how a head's part of
        that projection is computed from another input."""
        raise NotImplementedError

    def dims(self, model) -> dict[str, int]:
        cfg = model.config
        n_layers, n_heads = shape_of_config(cfg)
        d_model = int(getattr(cfg, "n_embd", None) or cfg.hidden_size)
        return {"n_layers": n_layers, "n_heads": n_heads, "d_model": d_model, "d_head": d_model // n_heads}


@dataclass(frozen=True)
class QKV:
    """The query (key, value) projection of one layer, per head.

    source:  the module whose forward *input* is the residual stream the projection reads
    output:  the module whose forward *output* holds every head's projected q (k, v) along its last axis
    columns: head -> the slice of that output belonging to the head
    project: (residual (B, T, d_model), head) -> that head's columns computed from it
    """

    source: Any
    output: Any
    columns: Any
    project: Any


class GPT2Adapter(Adapter):
    classes = ("GPT2LMHeadModel",)

    def base(self, model):
        return model.transformer

    def blocks(self, model):
        return model.transformer.h

    def final_norm(self, model, hidden):
        return model.transformer.ln_f(hidden)

    def unembed(self, model, hidden):
        return model.lm_head(hidden)

    def w_o(self, model, layer):
        return model.transformer.h[layer].attn.c_proj

    def attention(self, model, layer):
        return model.transformer.h[layer].attn

    def mlp_act(self, model, layer):
        return model.transformer.h[layer].mlp.act

    def resid_mid_module(self, model, layer):
        return model.transformer.h[layer].ln_2  # its input is the residual stream after attention

    def qkv(self, model, layer, which):
        # pre-LN: q, k and v are one Conv1D (x @ W + b, W: d x 3d) of ln_1(residual), heads side by side
        block = model.transformer.h[layer]
        d = model.config.n_embd
        dh = d // model.config.n_head
        part = "qkv".index(which[0])

        def columns(head):
            return slice(part * d + head * dh, part * d + (head + 1) * dh)

        def project(x, head):
            cols = columns(head)
            return block.ln_1(x) @ block.attn.c_attn.weight[:, cols] + block.attn.c_attn.bias[cols]

        return QKV(block.ln_1, block.attn.c_attn, columns, project)

    def unembed_ids(self, model, hidden, ids):
        return _linear_rows(hidden, model.lm_head.weight, None, ids)

    def shortcuts(self, model):
        cfg = model.config
        # the upcast-and-reorder variant computes attention in another order; cross-attention adds a sublayer
        return (getattr(cfg, "_attn_implementation", None) == "eager" and not cfg.reorder_and_upcast_attn
                and not cfg.add_cross_attention)

    def head_write(self, model, layer, dz, heads):
        c_proj = model.transformer.h[layer].attn.c_proj  # Conv1D: x @ weight + bias, weight (H * d_head, d)
        h, d_head = dz.shape[-2], dz.shape[-1]
        w = c_proj.weight.view(-1, d_head, c_proj.weight.shape[-1])[list(heads)]  # (h, d_head, d)
        return (dz.reshape(-1, h * d_head) @ w.reshape(h * d_head, -1)).view(*dz.shape[:-2], -1)

    def after_attention(self, model, layer, resid_mid):
        block = model.transformer.h[layer]
        return resid_mid + block.mlp(block.ln_2(resid_mid))  # as GPT2Block.forward: residual + MLP(ln_2(.))

    def block_at(self, model, layer, x, pos, args, kwargs):
        import torch
        from transformers.models.gpt2.modeling_gpt2 import eager_attention_forward

        block = model.transformer.h[layer]
        attn = block.attn
        B, T, d = x.shape
        rows = torch.arange(B, device=x.device)
        q, k, v = attn.c_attn(block.ln_1(x)).split(attn.split_size, dim=2)  # (B, T, d) each

        def heads(t):  # (B, T', d) -> (B, H, T', d_head)
            return t.view(B, t.shape[1], attn.num_heads, attn.head_dim).transpose(1, 2)

        mask = args[2] if len(args) > 2 else kwargs.get("attention_mask")  # GPT2Model passes it third
        if mask is not None:  # (B or 1, 1, T, T) additive -> the answer row's (B, 1, 1, T)
            mask = mask.expand(B, -1, -1, -1)[rows, :, pos].unsqueeze(2)
        z, _ = eager_attention_forward(attn, heads(q[rows, pos].unsqueeze(1)), heads(k), heads(v), mask,
                                       scaling=attn.scaling)  # (B, 1, H, d_head)
        attn_out = attn.c_proj(z.reshape(B, d))
        return self.after_attention(model, layer, attn_out + x[rows, pos])


class BertAdapter(Adapter):
    classes = ("BertForMaskedLM",)
    bidirectional = True

    def base(self, model):
        return model.bert

    def blocks(self, model):
        return model.bert.encoder.layer

    def unembed(self, model, hidden):
        return model.cls(hidden)

    def unembed_ids(self, model, hidden, ids):
        head = model.cls.predictions
        return _linear_rows(head.transform(hidden), head.decoder.weight, head.decoder.bias, ids)

    def w_o(self, model, layer):
        return model.bert.encoder.layer[layer].attention.output.dense

    def attention(self, model, layer):
        return model.bert.encoder.layer[layer].attention.self

    def mlp_act(self, model, layer):
        return model.bert.encoder.layer[layer].intermediate.intermediate_act_fn

    def qkv(self, model, layer, which):
        # post-LN: the block input itself is projected, by one Linear per q / k / v, heads side by side
        attention = model.bert.encoder.layer[layer].attention.self
        linear = {"q": attention.query, "k": attention.key, "v": attention.value}[which[0]]
        dh = attention.attention_head_size

        def columns(head):
            return slice(head * dh, (head + 1) * dh)

        def project(x, head):
            rows = columns(head)
            return x @ linear.weight[rows].T + linear.bias[rows]

        return QKV(linear, linear, columns, project)


def _linear_rows(hidden, weight, bias, ids):
    """``hidden @ weight[ids].T + bias[ids]``: the output head's logits of `ids` only (weight (V, d))."""
    import torch

    ids = torch.as_tensor(ids, device=weight.device)
    return torch.nn.functional.linear(hidden, weight[ids], None if bias is None else bias[ids])


def _adapters() -> tuple[Adapter, ...]:
    from mechcheck.interventions.llama import LlamaAdapter  # its own module; it builds on the classes here

    return (GPT2Adapter(), BertAdapter(), LlamaAdapter())


def adapter_for(model) -> Adapter:
    """The adapter of `model`'s class; ValueError naming the supported classes otherwise."""
    name = type(model).__name__
    adapters = _adapters()
    for a in adapters:
        if name in a.classes:
            return a
    supported = ", ".join(c for a in adapters for c in a.classes)
    raise ValueError(f"mechcheck has no intervention sites for {name} yet (supported: {supported})")
