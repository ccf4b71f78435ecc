"""The entity-tracking generators and their paired datasets (Prakash et al. 2024).

Expected values are recomputed from the *decoded* words of each prompt (a regular expression over the
sentence), never from the generator's layout, so a wrong position, a wrong answer or a broken desideratum
shows up as a failure.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from mechcheck.registry import TASKS
from mechcheck.tasks import entity_pairs as ep
from mechcheck.tasks.corpus import make_corpus
from mechcheck.tasks.entity import LETTERS, OBJECTS, entity_vocabulary, make_entity_binding, make_entity_tracking

VOCAB = entity_vocabulary()
CONTAINS = re.compile(r"^<s> The (\w+) is in Box ([A-Z])((?: , the \w+ is in Box [A-Z])*) \. Box ([A-Z]) contains the$")


def words(batch, i: int) -> list[str]:
    return [VOCAB.words[t] for t in batch.tokens[i] if t != 0]


def parse_contains(batch, i: int) -> tuple[list[str], list[str], str]:
    """(objects, labels, query label) read from the sentence itself."""
    m = CONTAINS.match(" ".join(words(batch, i)))
    assert m, " ".join(words(batch, i))
    rest = re.findall(r", the (\w+) is in Box ([A-Z])", m.group(3))
    return [m.group(1), *[o for o, _ in rest]], [m.group(2), *[lab for _, lab in rest]], m.group(4)


def expected_answer(objects: list[str], labels: list[str], query: str) -> str:
    assert labels.count(query) == 1
    return objects[labels.index(query)]


@pytest.fixture(scope="module")
def task():
    return make_entity_tracking(n_boxes=7)


def test_registered_with_its_labels_and_groups():
    for name in ("entity_tracking", "entity_binding"):
        meta = TASKS.get(name).meta
        assert set(meta["labels"]) >= {"query_box", "query_label_pos", "prev_label_pos", "answer_pos"}
        assert set(meta["token_groups"]) >= {"labels", "objects"}


def test_sampling_is_deterministic_and_splits_are_disjoint(task):
    a, b = task.sample(200, "eval", 3), task.sample(200, "eval", 3)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert not np.array_equal(a.tokens, task.sample(200, "eval", 4).tokens)
    train = {r.tobytes() for r in task.sample(3000, "train", 3).tokens}
    evals = {r.tobytes() for r in task.sample(3000, "eval", 3).tokens}
    assert train and evals and not train & evals


def test_eval_prompts_are_aligned_and_positions_point_at_the_right_tokens(task):
    batch = task.sample(300, "eval", 0)
    assert batch.tokens.shape == (300, 54) and (batch.tokens != 0).all()  # 7 n + 5 tokens, no padding
    assert (batch.answer_pos == 53).all() and (batch.labels["answer_pos"] == 53).all()
    for i in range(len(batch)):
        objects, labels, query = parse_contains(batch, i)
        assert len(set(objects)) == len(set(labels)) == 7
        w = words(batch, i)
        assert w[batch.labels["query_label_pos"][i]] == query
        assert w[batch.labels["prev_label_pos"][i]] == query and batch.labels["prev_label_pos"][i] < 48 + 1
        assert labels[batch.labels["query_box"][i]] == query
        assert VOCAB.words[batch.answer_ids[i]] == expected_answer(objects, labels, query)
        assert [w[p] for p in np.flatnonzero(batch.groups["labels"][i])] == labels
        assert [w[p] for p in np.flatnonzero(batch.groups["objects"][i])] == objects
    assert sorted(VOCAB.words[c] for c in batch.candidates) == sorted(OBJECTS)
    # the paper's label positions (BOS at 0): 6, 13, ..., 48
    assert set(batch.labels["prev_label_pos"].tolist()) <= set(range(6, 49, 7))


def test_curriculum_varies_box_counts_in_train_only():
    t = make_entity_tracking(n_boxes=7, min_boxes=2, max_boxes=4)
    train = t.sample(400, "train", 1)
    assert set(train.labels["n_boxes"].tolist()) == {2, 3, 4}
    for i in range(len(train)):
        objects, labels, query = parse_contains(train, i)
        assert len(objects) == train.labels["n_boxes"][i]
        assert words(train, i)[train.answer_pos[i]] == "the" and train.tokens[i, train.answer_pos[i] + 1:].sum() == 0
        assert VOCAB.words[train.answer_ids[i]] == expected_answer(objects, labels, query)
    assert (t.sample(100, "eval", 1).labels["n_boxes"] == 7).all()
    assert t.seq_len == 54


def test_answered_train_queries_are_correct():
    t = make_entity_tracking(n_boxes=4, train_queries=3)
    b = t.sample(50, "train", 0)
    for i in range(len(b)):
        text = " ".join(words(b, i))
        ctx = dict((lab, o) for o, lab in re.findall(r"(?:The|the) (\w+) is in Box ([A-Z])", text))
        answered = re.findall(r"Box ([A-Z]) contains the (\w+) \.", text)
        assert len(answered) == 2 and all(ctx[lab] == o for lab, o in answered)
        assert VOCAB.words[b.answer_ids[i]] == ctx[words(b, i)[b.labels["query_label_pos"][i]]]
    assert "contains the" not in " ".join(words(t.sample(5, "eval", 0), 0)).split(" . ")[0]


@pytest.mark.parametrize("form,values", [("holds", "objects"), ("assign", "objects"), ("assign", "numbers")])
def test_binding_task_answers_the_bound_value(form, values):
    t = make_entity_binding(n_boxes=7, form=form, values=values)
    b = t.sample(200, "train", 2)
    pattern = r"Box ([A-Z]) holds the (\w+)" if form == "holds" else r"([A-Z]) = (\w+)"
    for i in range(len(b)):
        text = " ".join(words(b, i))
        pairs = re.findall(pattern, text)
        assert len(pairs) == 7 and "contains" not in text
        binding = dict(pairs)
        q = words(b, i)[b.labels["query_label_pos"][i]]
        assert VOCAB.words[b.answer_ids[i]] == binding[q]
        assert words(b, i)[b.labels["prev_label_pos"][i]] == q
    if values == "numbers":
        assert {VOCAB.words[c] for c in b.candidates} == {str(n) for n in range(10)}


def test_all_tasks_share_one_vocabulary():
    corpus = make_corpus(max_number=9)
    ent, bind = make_entity_tracking(), make_entity_binding(form="assign", values="numbers")
    assert ent.vocab.words == bind.vocab.words
    assert ent.vocab.words[: len(corpus.vocab.words)] == corpus.vocab.words  # same ids for every corpus word
    assert ent.vocab_size >= corpus.vocab_size and len(set(LETTERS) & set(corpus.vocab.words)) == 0


def _parsed(batch):
    return [parse_contains(batch, i) for i in range(len(batch))]


def test_counterfactual_noise_prompts():
    p = ep.counterfactual({"n_boxes": 7}, 200, seed=0)
    assert p.base.tokens.shape == p.source.tokens.shape == (200, 54)
    qb, qs = p.base.labels["query_box"], p.source.labels["query_box"]
    np.testing.assert_array_equal(qs, (qb + 1) % 7)
    replaced = 0
    for (bo, bl, bq), (so, sl, sq), i in zip(_parsed(p.base), _parsed(p.source), range(len(p))):
        assert (bo, bl) != (so, sl)
        replaced += sq != sl[qs[i]]  # the random letter usually differs from the box's own label
    assert replaced > 150
    np.testing.assert_array_equal(p.target, p.base.answer_ids)


@pytest.mark.parametrize("kind", ep.DESIDERATA)
def test_desiderata_targets(kind):
    p = ep.desiderata({"n_boxes": 7}, kind, 300, seed=1)
    assert p.base.tokens.shape == p.source.tokens.shape
    pb, ps = p.base.labels["query_box"], p.source.labels["query_box"]
    assert (pb != ps).all()  # p_s != p_b on every pair
    for i, ((bo, bl, bq), (so, sl, sq)) in enumerate(zip(_parsed(p.base), _parsed(p.source))):
        target = VOCAB.words[p.target[i]]
        assert VOCAB.words[p.base.candidates[p.target_idx[i]]] == target
        base_answer = expected_answer(bo, bl, bq)
        assert target != base_answer
        if kind == "positional":
            assert target == bo[ps[i]]
        elif kind == "object_value":
            assert target == expected_answer(so, sl, sq) and target not in bo
        else:
            assert sq in bl and sq != bq and target == bo[bl.index(sq)]
            assert bl.index(sq) != ps[i]  # positional and box-label targets differ
    # both prompts of a pair are valid prompts of the split: their answers are what the sentences say
    assert all(VOCAB.words[a] == expected_answer(*x) for a, x in zip(p.source.answer_ids, _parsed(p.source)))


def test_pairs_are_deterministic_and_from_the_split():
    a, b = ep.positional({}, 50, seed=5), ep.positional({}, 50, seed=5)
    np.testing.assert_array_equal(a.source.tokens, b.source.tokens)
    train = {r.tobytes() for r in make_entity_tracking().sample(3000, "train", 0).tokens}
    assert not {r.tobytes() for r in a.base.tokens} & train


def test_mean_reference_replaces_the_query_label():
    ref = ep.mean_reference({"n_boxes": 7}, 300, seed=0)
    assert ref.tokens.shape == (300, 54)
    absent = 0
    for i, (o, labels, q) in enumerate(_parsed(ref)):
        in_ctx = q in labels
        absent += not in_ctx
        assert (ref.labels["prev_label_pos"][i] == -1) == (not in_ctx)
    assert absent > 150  # 26 letters, 7 in the context: most random letters are absent


def test_bad_arguments_are_one_line_errors():
    with pytest.raises(ValueError, match="boxes need at least"):
        make_entity_tracking(n_boxes=7, n_labels=5)
    with pytest.raises(ValueError, match="min_boxes <= max_boxes"):
        make_entity_tracking(min_boxes=5, max_boxes=3)
    with pytest.raises(ValueError, match="unknown desideratum"):
        ep.desiderata({}, "colour", 3, 0)


def test_repeat_objects_draws_train_objects_with_replacement_only():
    t = make_entity_tracking(n_boxes=7, n_objects=8, repeat_objects=True)
    train = t.sample(200, "train", 0)
    repeated = 0
    for i in range(len(train)):
        objects, labels, query = parse_contains(train, i)
        repeated += len(set(objects)) < len(objects)
        assert len(set(labels)) == len(labels)  # labels stay distinct, so every query has one answer
        assert VOCAB.words[train.answer_ids[i]] == expected_answer(objects, labels, query)
    assert repeated > 150  # 7 draws from 8 objects repeat one with probability 0.994
    ev = t.sample(200, "eval", 0)
    assert all(len(set(parse_contains(ev, i)[0])) == 7 for i in range(len(ev)))
    # the default draws distinct objects, and the new argument leaves existing cache keys alone
    assert all(len(set(parse_contains(make_entity_tracking(n_boxes=7).sample(50, "train", 0), i)[0])) == 7
               for i in range(50))
    from mechcheck.recipes import task_payload
    from mechcheck.spec import TaskSpec
    assert "repeat_objects" not in task_payload(TaskSpec("t", "entity_tracking", {"n_boxes": 7}, "t.yaml"))["args"]
