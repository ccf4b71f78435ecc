"""The Llama-style adapter (Llama, Mistral, Qwen2): where their sites live (quirks: see `sites`' docstring)."""

from __future__ import annotations

from mechcheck.interventions.sites import QKV, Adapter, _linear_rows

__all__ = ["LlamaAdapter"]


class LlamaAdapter(Adapter):
    """Llama-style decoders (Llama, Mistral, Qwen2 class layout): pre-RMSNorm blocks, separate q / k / v / o
    projections, rotary position embeddings applied *after* q_proj / k_proj (so a patched q or k input is rotated
    as usual), and grouped-query attention (several query heads share a key / value head)."""

    classes = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")

    def base(self, model):
        return model.model

    def blocks(self, model):
        return model.model.layers

    def final_norm(self, model, hidden):
        return model.model.norm(hidden)

    def unembed(self, model, hidden):
        return model.lm_head(hidden)

    def unembed_ids(self, model, hidden, ids):
        return _linear_rows(hidden, model.lm_head.weight, None, ids)

    def w_o(self, model, layer):
        return model.model.layers[layer].self_attn.o_proj

    def attention(self, model, layer):
        return model.model.layers[layer].self_attn

    mlp_post_is_input = True

    def mlp_act(self, model, layer):
        return model.model.layers[layer].mlp.down_proj  # its input: act(gate_proj(x)) * up_proj(x)

    def resid_mid_module(self, model, layer):
        return model.model.layers[layer].post_attention_layernorm  # its input: the residual after attention

    def qkv(self, model, layer, which):
        block = model.model.layers[layer]
        attn = block.self_attn
        linear = {"q": attn.q_proj, "k": attn.k_proj, "v": attn.v_proj}[which[0]]
        dh = attn.head_dim
        group = 1 if which[0] == "q" else model.config.num_attention_heads // model.config.num_key_value_heads

        def columns(head):  # a query head's own slice; for k / v the slice of the key-value head it reads
            kv = head // group
            return slice(kv * dh, (kv + 1) * dh)

        def project(x, head):
            cols = columns(head)
            out = block.input_layernorm(x) @ linear.weight[cols].T
            return out + linear.bias[cols] if linear.bias is not None else out

        return QKV(block.input_layernorm, linear, columns, project)

    def dims(self, model):
        cfg = model.config
        d_head = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        return {"n_layers": cfg.num_hidden_layers, "n_heads": cfg.num_attention_heads, "d_model": cfg.hidden_size,
                "d_head": int(d_head)}
