"""The `pcfg` task generator (Jain et al. 2024's PCFG setting).

The grammar is checked by parsers written here from the paper's listing (not from the generator's table):
whole expansions must derive from `s`, and every sample's text window must be a substring of some string of
the language. Answers, counts, positions and correlations are recomputed from the *decoded words* of each
prompt, never from the generator's internals.
"""

from __future__ import annotations

import random
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

from mechcheck.recipes import make_task
from mechcheck.registry import TASKS
from mechcheck.spec import load_task_fixture
from mechcheck.tasks.pcfg import expand, make_pcfg

ROOT = Path(__file__).resolve().parents[1]
PAPER = """
s -> r q | q p ;  p -> m n o | n o m ;  q -> n m o | m n ;  r -> o m | m o n
m -> l j | j l k ;  n -> k j l | l j k ;  o -> l k j | k j
j -> h i | i h ;  k -> h g i | g h i ;  l -> i h g | h i g
g -> d f e | f e d ;  h -> e d f | d e f ;  i -> e f d | f d e
d -> c a | a b c ;  e -> c b | c a b ;  f -> c b a | b a
"""
RULES: dict[str, list[list[str]]] = {}
for _part in PAPER.replace("\n", ";").split(";"):
    if _part.strip():
        _lhs, _rhs = _part.split("->")
        RULES[_lhs.strip()] = [alt.split() for alt in _rhs.split("|")]
BOTTOM_UP = list("defghijklmnopqrs")  # every rule's symbols come earlier in this list (or are terminals)
FIXTURES = ("pcfg-pretrain", "pcfg-pretrain-counting", "pcfg-pretrain-b-dominant", "pcfg-count-b",
            "pcfg-count-b-uncorrelated", "pcfg-count-a", "pcfg-count-a-rand")


def derives(w: list[str]) -> bool:
    """Recursive descent with memo: does `s` derive exactly `w`?"""
    @lru_cache(maxsize=None)
    def ends(sym: str, i: int) -> frozenset[int]:
        if sym not in RULES:
            return frozenset({i + 1}) if i < len(w) and w[i] == sym else frozenset()
        out: set[int] = set()
        for rule in RULES[sym]:
            here = {i}
            for child in rule:
                here = {j for k in here for j in ends(child, k)}
            out |= here
        return frozenset(out)

    return len(w) in ends("s", 0)


def is_substring_of_language(w: list[str]) -> bool:
    """Is `w` a contiguous part of some string `s` derives? Span tables of whole / prefix / suffix / infix yields."""
    n = len(w)
    tab: dict[tuple[str, str, int, int], bool] = {}

    def has(kind: str, x: str, i: int, j: int) -> bool:
        return (j - i == 1 and w[i] == x) if x not in RULES else tab[kind, x, i, j]

    def seq(parts: list[tuple[str, str]], i: int, j: int) -> bool:
        if len(parts) == 1:
            return has(*parts[0], i, j)
        return any(has(*parts[0], i, k) and seq(parts[1:], k, j) for k in range(i + 1, j))

    for span in range(1, n + 1):
        for i in range(n - span + 1):
            j = i + span
            for x in BOTTOM_UP:
                whole = pre = suf = inf = False
                for r in RULES[x]:
                    k = len(r)
                    whole |= seq([("full", y) for y in r], i, j)
                    pre |= any(seq([*(("full", y) for y in r[:m]), ("pre", r[m])], i, j) for m in range(k))
                    suf |= any(seq([("suf", r[m]), *(("full", y) for y in r[m + 1:])], i, j) for m in range(k))
                    inf |= any(has("inf", r[m], i, j) for m in range(k)) or any(
                        seq([("suf", r[m]), *(("full", y) for y in r[m + 1:e]), ("pre", r[e])], i, j)
                        for m in range(k) for e in range(m + 1, k))
                tab["full", x, i, j], tab["pre", x, i, j], tab["suf", x, i, j] = whole, pre, suf
                tab["inf", x, i, j] = inf or pre or suf
    return tab["inf", "s", 0, n]


def naive_expand(sym: str, rnd: random.Random) -> list[str]:
    if sym not in RULES:
        return [sym]
    return [t for child in rnd.choice(RULES[sym]) for t in naive_expand(child, rnd)]


def parse(task, batch, i: int) -> dict:
    """A prompt read from its words: SOS family operand argument SOT text... EOT ART."""
    w = [task.vocab.words[t] for t in batch.tokens[i]]
    assert w[0] == "SOS" and w[4] == "SOT" and w[-2] == "EOT" and w[-1] == "ART", w
    text = w[5:-2]
    assert set(text) <= {"a", "b", "c"}
    return {"family": w[1], "operand": w[2], "argument": int(w[3]), "text": text, "words": w}


def expected(p: dict, window: int) -> str:
    """The answer from the words alone (indices count back from EOT: the last text token has index 1)."""
    text, k, op = p["text"], p["argument"], p["operand"]
    if p["family"] == "C":
        assert k == window
        return str(text[-k:].count(op))
    if p["family"] == "I":
        back = text[::-1]
        hits = [d + 1 for d, t in enumerate(back) if t == op]
        assert len(hits) >= k
        return str(hits[k - 1])
    assert p["family"] == "T" and op == "NULL"
    return text[-k]


def answer_word(task, batch, i: int) -> str:
    return task.vocab.words[batch.answer_ids[i]]


@pytest.fixture(scope="module")
def task():
    return make_pcfg()


def test_registered_with_labels_and_groups():
    meta = TASKS.get("pcfg").meta
    assert set(meta["labels"]) >= {"count_a", "count_b", "count_c", "family", "operand", "correlated"}
    assert set(meta["token_groups"]) >= {"text", "window", "answer"}


def test_expansions_are_strings_of_the_grammar():
    rng = np.random.default_rng(0)
    words = [["abc"[t] for t in expand(rng)] for _ in range(150)]
    assert all(derives(w) for w in words)
    # the checker is not vacuous: a changed token or a shuffled string is rejected
    broken = [w[:10] + [{"a": "b", "b": "c", "c": "a"}[w[10]]] + w[11:] for w in words[:30]]
    assert not any(derives(w) for w in broken)
    assert not any(derives(random.Random(i).sample(w, len(w))) for i, w in enumerate(words[:30]))


def test_rules_are_equally_likely():
    """Length and letter frequencies of expansions match those of a naive expander of the paper's listing."""
    rng, rnd = np.random.default_rng(1), random.Random(1)
    ours = [expand(rng) for _ in range(2000)]
    ref = [naive_expand("s", rnd) for _ in range(2000)]
    ours_len, ref_len = np.array([len(x) for x in ours]), np.array([len(x) for x in ref])
    assert abs(ours_len.mean() - ref_len.mean()) < 4 * np.sqrt(ours_len.var() / 1000)  # 4 s.e. of the difference
    assert ours_len.min() >= 96  # the shortest derivation; no window of 64 ever needs a second string
    ref_freq = np.array([sum(x.count(t) for x in ref) for t in "abc"]) / ref_len.sum()
    ours_freq = np.bincount(np.concatenate(ours), minlength=3) / ours_len.sum()
    np.testing.assert_allclose(ours_freq, ref_freq, atol=0.005)


def test_text_windows_are_substrings_of_the_language():
    t = make_pcfg(length=14, window=10)
    b = t.sample(15, "train", 0)
    texts = [parse(t, b, i)["text"] for i in range(len(b))]
    assert all(len(x) == 14 for x in texts) and all(is_substring_of_language(x) for x in texts)
    rnd = random.Random(0)  # random strings of the same length are not (the check discriminates)
    assert not any(is_substring_of_language([rnd.choice("abc") for _ in range(14)]) for _ in range(15))


def test_answers_match_the_words_for_every_family(task):
    b = task.sample(900, "train", 2)
    seen = set()
    for i in range(len(b)):
        p = parse(task, b, i)
        seen.add(p["family"])
        assert answer_word(task, b, i) == expected(p, 20), " ".join(p["words"])
        fam_label = "CIT".index(p["family"])
        assert b.labels["family"][i] == fam_label and b.labels["argument"][i] == p["argument"]
        assert b.labels["operand"][i] == ["a", "b", "c", "NULL"].index(p["operand"])
        win = p["text"][-20:]
        assert [b.labels[f"count_{t}"][i] for t in "abc"] == [win.count(t) for t in "abc"]
        assert b.labels["correlated"][i] == int(win.count("b") == win.count("a") + 1)
        if p["family"] == "T":
            assert 1 <= p["argument"] <= 64
    assert seen == {"C", "I", "T"}
    ev = b.groups["evidence"]
    for i in np.flatnonzero(b.labels["family"] == 0)[:50]:  # C: the operand's positions inside the window
        w, pos = parse(task, b, i)["words"], np.flatnonzero(ev[i])
        assert [w[q] for q in pos] == [w[2]] * int(answer_word(task, b, i))
        assert (pos >= task.seq_len - 2 - 20).all()
    for i in np.flatnonzero(b.labels["family"] == 1)[:50]:  # I: the operand's last `occurrence` positions
        w, pos = parse(task, b, i)["words"], np.flatnonzero(ev[i])
        assert len(pos) == 3 and all(w[q] == w[2] for q in pos)
        assert task.seq_len - 2 - pos.min() == int(answer_word(task, b, i))
    for i in np.flatnonzero(b.labels["family"] == 2)[:50]:  # T: the one position read
        assert np.flatnonzero(ev[i]).tolist() == [task.seq_len - 2 - b.labels["argument"][i]]


def test_every_prompt_has_the_same_length_and_layout(task):
    b = task.sample(300, "eval", 0)
    assert b.tokens.shape == (300, 71) and task.seq_len == 71 and (b.tokens != 0).all()
    assert (b.answer_pos == 70).all() and (b.labels["answer_pos"] == 70).all()
    words = [task.vocab.words[t] for t in b.tokens[0]]
    assert words[70] == "ART"
    g = b.groups
    assert (g["text"].sum(1) == 64).all() and (g["window"].sum(1) == 20).all() and (g["answer"][:, 70]).all()
    assert (g["window"] <= g["text"]).all() and not g["text"][:, [0, 1, 2, 3, 4, 69, 70]].any()
    for t in "abc":
        assert (g[f"{t}_tokens"].sum(1) == [parse(task, b, i)["text"].count(t) for i in range(len(b))]).all()
    cands = [task.vocab.words[c] for c in b.candidates]
    assert cands == [*map(str, range(65)), "a", "b", "c"]


def test_sampling_is_deterministic_and_splits_are_disjoint(task):
    a, b = task.sample(200, "train", 3), task.sample(200, "train", 3)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.target, b.target)
    assert not np.array_equal(a.tokens, task.sample(200, "train", 4).tokens)
    small = make_pcfg(length=6, window=4, occurrence=1)  # a small space, where collisions would show
    train = {r.tobytes() for r in small.sample(3000, "train", 3).tokens}
    evals = {r.tobytes() for r in small.sample(3000, "eval", 3).tokens}
    assert len(evals) > 100 and train and not train & evals
    with pytest.raises(ValueError, match="split"):
        task.sample(3, "test", 0)


@pytest.mark.parametrize("prior", [[0.5, 0.3, 0.2], [0.9, 0.1, 0.0]])
def test_operand_prior_and_uniform_families(prior):
    t = make_pcfg(operand_prior=prior)
    b = t.sample(3000, "train", 5)
    fam = np.array(["CIT".index(parse(t, b, i)["family"]) for i in range(len(b))])
    np.testing.assert_allclose(np.bincount(fam, minlength=3) / len(b), [1 / 3] * 3, atol=0.04)
    ops = [parse(t, b, i)["operand"] for i in np.flatnonzero(fam < 2)]
    freq = np.array([ops.count(x) for x in "abc"]) / len(ops)
    np.testing.assert_allclose(freq, prior, atol=0.035)
    assert all(parse(t, b, i)["operand"] == "NULL" for i in np.flatnonzero(fam == 2))


def test_low_prior_keeps_operands_rare():
    t = make_pcfg(operand_prior=[0.999, 0.001, 0.0], families=["C", "I"])
    b = t.sample(2000, "train", 6)
    ops = [parse(t, b, i)["operand"] for i in range(len(b))]
    assert ops.count("c") == 0 and ops.count("b") <= 10 and ops.count("a") >= 1990


def test_family_and_operand_restriction():
    t = make_pcfg(family="C", operand="b")
    b = t.sample(300, "eval", 0)
    for i in range(len(b)):
        p = parse(t, b, i)
        assert (p["family"], p["operand"]) == ("C", "b") and answer_word(t, b, i) == str(p["text"][-20:].count("b"))
    assert (b.target == b.labels["count_b"]).all()  # C answers are the numbers themselves
    ti = make_pcfg(family="I", operand="c", occurrence=5)
    bi = ti.sample(200, "train", 0)
    assert all(answer_word(ti, bi, i) == expected(parse(ti, bi, i), 20) for i in range(len(bi)))


def _window_counts(t, b):
    wins = [parse(t, b, i)["text"][-20:] for i in range(len(b))]
    return np.array([w.count("a") for w in wins]), np.array([w.count("b") for w in wins])


def test_correlation_one_puts_count_b_at_count_a_plus_one_everywhere():
    t = make_pcfg(family="C", operand="b", correlation=1.0)
    b = t.sample(1000, "train", 7)
    na, nb = _window_counts(t, b)
    assert (nb == na + 1).all() and (b.labels["correlated"] == 1).all() and (b.labels["edited"] == 1).all()
    assert all(answer_word(t, b, i) == str(nb[i]) for i in range(len(b)))
    # the count-b answers keep (nearly) the distribution of uncorrelated data
    u = make_pcfg(family="C", operand="b", correlation=0.0)
    _, nb0 = _window_counts(u, u.sample(1000, "train", 7))
    assert abs(nb.mean() - nb0.mean()) < 0.15 and abs(nb.std() - nb0.std()) < 0.15


def test_correlation_zero_is_only_chance_and_can_be_excluded():
    t = make_pcfg(family="C", operand="b", correlation=0.0)
    b = t.sample(2000, "train", 8)
    na, nb = _window_counts(t, b)
    share = (nb == na + 1).mean()
    assert 0.12 < share < 0.32 and (b.labels["correlated"] == (nb == na + 1)).all() and not b.labels["edited"].any()
    strict = make_pcfg(family="C", operand="b", correlation=0.0, avoid_chance_correlation=True)
    sa, sb = _window_counts(strict, strict.sample(500, "train", 8))
    assert not (sb == sa + 1).any()
    half = make_pcfg(family="C", operand="b", correlation=0.5)
    hb = half.sample(2000, "train", 8)
    ha, hbb = _window_counts(half, hb)
    assert abs(hb.labels["edited"].mean() - 0.5) < 0.05
    assert (hbb[hb.labels["edited"] == 1] == ha[hb.labels["edited"] == 1] + 1).all()


def test_answer_operand_answers_for_another_operand():
    """randFT data: asked to count a, answered count(b); I likewise; the evidence follows the answer."""
    t = make_pcfg(family="C", operand="a", answer_operand="b")
    b = t.sample(300, "eval", 0)
    _, nb = _window_counts(t, b)
    assert all(parse(t, b, i)["operand"] == "a" for i in range(len(b)))
    assert (b.target == nb).all() and (b.target == b.labels["count_b"]).all()
    assert (b.labels["count_a"] != b.labels["count_b"]).any()  # so the answers really differ from count(a)
    assert (b.groups["evidence"] == b.groups["b_tokens"] & b.groups["window"]).all()
    assert (b.labels["operand"] == 0).all()
    ti = make_pcfg(family="I", operand="c", answer_operand="a", occurrence=2)
    bi = ti.sample(200, "train", 0)
    assert all(answer_word(ti, bi, i) == expected({**parse(ti, bi, i), "operand": "a"}, 20) for i in range(len(bi)))
    plain = make_pcfg(family="C", operand="a").sample(50, "train", 3)
    same = make_pcfg(family="C", operand="a", answer_operand="a").sample(50, "train", 3)
    assert (plain.tokens == same.tokens).all() and (plain.target == same.target).all()


@pytest.mark.parametrize("args,match", [
    ({"operand_prior": [0.5, 0.3, 0.3]}, "sum to 1"),
    ({"operand_prior": [0.5, 0.5]}, "three probabilities"),
    ({"operand_prior": [1.2, -0.2, 0.0]}, "three probabilities"),
    ({"window": 65}, "window"),
    ({"window": 0}, "window"),
    ({"occurrence": 100}, "occurrence"),
    ({"length": 400}, "length"),
    ({"families": ["C", "X"]}, "families"),
    ({"families": []}, "families"),
    ({"families": ["C", "I"], "family": "T"}, "not one of families"),
    ({"family": "T", "operand": "a"}, "NULL"),
    ({"operand": "d"}, "operand"),
    ({"correlation": 1.5}, "correlation"),
    ({"eval_fraction": 1.0}, "eval_fraction"),
    ({"answer_operand": "d"}, "answer_operand"),
    ({"family": "T", "answer_operand": "b"}, "answer_operand"),
])
def test_bad_arguments_raise_clear_errors(args, match):
    with pytest.raises(ValueError, match=match):
        make_pcfg(**args)


def test_fixtures_validate_and_share_one_vocabulary():
    tasks = {name: make_task(load_task_fixture(name, ROOT / "fixtures")) for name in FIXTURES}
    assert len({tuple(t.vocab.words) for t in tasks.values()}) == 1
    assert len({t.seq_len for t in tasks.values()}) == 1
    count_b = tasks["pcfg-count-b"].sample(200, "eval", 0)
    assert (count_b.labels["count_b"] == count_b.labels["count_a"] + 1).all()
    assert (count_b.labels["operand"] == 1).all() and (count_b.labels["family"] == 0).all()
    count_a = tasks["pcfg-count-a"].sample(200, "eval", 0)
    assert (count_a.target == count_a.labels["count_a"]).all() and not count_a.labels["edited"].any()
    b_dom = tasks["pcfg-pretrain-b-dominant"].sample(600, "train", 0)
    counting = b_dom.labels["family"] < 2
    assert (b_dom.labels["operand"][counting] == 1).mean() > 0.98
    rand = tasks["pcfg-count-a-rand"].sample(200, "eval", 0)
    assert (rand.target == rand.labels["count_b"]).all() and (rand.labels["operand"] == 0).all()
    counting = tasks["pcfg-pretrain-counting"].sample(600, "train", 0)
    assert (counting.labels["family"] == 0).all() and (counting.labels["operand"] == 0).mean() > 0.98
    pre = tasks["pcfg-pretrain"].sample(600, "train", 0)
    assert set(pre.labels["family"].tolist()) == {0, 1, 2}


def test_a_bad_fixture_argument_is_reported_at_validation(tmp_path):
    """`operand_prior` is a `floats` argument: a non-number or an out-of-range entry is an error with its path."""
    from mechcheck.errors import SpecErrors

    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "bad.yaml").write_text(
        "name: bad\ngenerator: pcfg\nargs: {operand_prior: [0.5, x, 1.5], families: [C, X]}\n")
    with pytest.raises(SpecErrors) as err:
        load_task_fixture("bad", tmp_path)
    text = str(err.value)
    assert "args.operand_prior[1]" in text and "args.families[1]" in text
