"""Context-dependent decision making (CDM), the task of Lin 2024, adapted from Mante et al. 2013.

Each trial shows a context cue (motion or color) and, for each of the two modalities, one number of
evidence for *left* and one for *right*. The answer is the side whose number is larger **in the cued
modality**; the other modality is a distractor. Two numbers per modality make the task a numerical
comparison, as in the paper's abstract (docs/methods/lin2024.md). Numbers are small integers so that a word-level
vocabulary has one token per number; the same trials can be written as text for a real tokenizer.

Word-level prompt (13 tokens, answer read at "choice"):
    context motion motion left 3 right 7 color left 8 right 2 choice   ->  right

Text prompt (real tokenizer; answer is the next token after "Choice:"):
    "Context: motion. Motion: left 3, right 7. Color: left 8, right 2. Choice:"   ->  " right"

Masked readout (`readout: mask`, for a masked LM such as BERT): the same text ending in "Choice: [MASK]"
with the tokenizer's special tokens ("[CLS] ... [MASK] [SEP]"); the answer is read at the mask.

The train and eval splits are disjoint: every distinct trial (context, four numbers) is assigned to one
split by a stable hash, so no eval prompt is ever seen in training, for any seed.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

import numpy as np

from mechcheck.registry import TASKS, Param
from mechcheck.tasks import Task, TaskBatch, WordVocab
from mechcheck.tasks.tokenizers import load_tokenizer

__all__ = ["make_cdm", "VERSION", "word_vocabulary"]

#: Bump whenever the generated data changes for the same arguments and seed (it is part of cache keys).
VERSION = "1"
CONTEXTS = ("motion", "color")
SIDES = ("left", "right")
TOKEN_GROUPS = ("context", "numbers", "motion_numbers", "color_numbers", "answer")
#: the labels of every batch (`_trials`): what the representation experiments may decode or score
LABELS = ("context", "motion_sign", "color_sign", "choice", "congruent", "response_type")
# Word-level layout: position of each slot in the 13-token prompt.
_WORD_LAYOUT = ["context", "{ctx}", "motion", "left", "{a}", "right", "{b}", "color", "left", "{c}", "right", "{d}", "choice"]
_POS = {"ctx": 1, "a": 4, "b": 6, "c": 9, "d": 11, "answer": 12}


@lru_cache(maxsize=16)
def _partition(max_number: int, min_gap: int, eval_fraction: float) -> dict[str, np.ndarray]:
    """All distinct trials, as rows (ctx, a, b, c, d), split into 'train' and 'eval' by a stable hash."""
    n = np.arange(max_number + 1)
    a, b = np.meshgrid(n, n, indexing="ij")
    keep = np.abs(a - b) >= min_gap
    pairs = np.stack([a[keep], b[keep]], axis=1)  # (P, 2) ordered pairs with a != b
    if len(pairs) == 0:
        raise ValueError(f"cdm: no number pairs with max_number={max_number} and min_gap={min_gap}")
    P = len(pairs)
    ctx = np.repeat(np.arange(2), P * P)
    m = np.tile(np.repeat(np.arange(P), P), 2)
    c = np.tile(np.arange(P), 2 * P)
    rows = np.column_stack([ctx, pairs[m], pairs[c]])  # (2 P^2, 5)
    # blake2b of the row's bytes: stable across processes and platforms (Python's hash() is salted).
    digest = np.array(
        [int.from_bytes(hashlib.blake2b(r.astype(np.int16).tobytes(), digest_size=4).digest(), "little") for r in rows],
        dtype=np.uint64,
    )
    is_eval = (digest % 10_000) < int(round(eval_fraction * 10_000))
    return {"eval": rows[is_eval], "train": rows[~is_eval]}


def _trials(rows: np.ndarray) -> dict[str, np.ndarray]:
    ctx, a, b, c, d = rows.T
    side_m = (b > a).astype(np.int64)  # 0 = left, 1 = right
    side_c = (d > c).astype(np.int64)
    choice = np.where(ctx == 0, side_m, side_c)
    return {
        "context": ctx.astype(np.int64),
        "motion_sign": side_m,
        "color_sign": side_c,
        "choice": choice,
        "congruent": (side_m == side_c).astype(np.int64),
        # Lin 2024's "response type" (docs/methods/lin2024.md, ours): context x congruent/incongruent, 4 classes
        "response_type": (2 * ctx + (side_m == side_c)).astype(np.int64),
    }


def _draw(parts: dict[str, np.ndarray], n: int, split: str, seed: int) -> np.ndarray:
    if split not in parts:
        raise ValueError(f"cdm: unknown split {split!r} (allowed: train, eval)")
    pool = parts[split]
    # The split is folded into the seed so that train and eval streams differ even for equal seeds.
    rng = np.random.default_rng([seed, 0 if split == "train" else 1, 0xCD])
    return pool[rng.integers(0, len(pool), size=n)]


def word_vocabulary(max_number: int) -> WordVocab:
    """The word-level vocabulary (other tasks extend it, keeping these ids, so models can move between them)."""
    return WordVocab(["context", "motion", "color", "left", "right", "choice", *[str(i) for i in range(max_number + 1)]])


def _word_task(max_number: int, min_gap: int, eval_fraction: float) -> Task:
    numbers = [str(i) for i in range(max_number + 1)]
    vocab = word_vocabulary(max_number)
    num_ids = np.array(vocab.encode(numbers))
    parts = _partition(max_number, min_gap, eval_fraction)
    template = np.array([vocab.ids.get(w, 0) for w in _WORD_LAYOUT], dtype=np.int64)
    ctx_ids = np.array(vocab.encode(list(CONTEXTS)))
    T = len(_WORD_LAYOUT)

    def sample(n: int, split: str, seed: int) -> TaskBatch:
        rows = _draw(parts, n, split, seed)
        labels = _trials(rows)
        tokens = np.tile(template, (n, 1))
        tokens[:, _POS["ctx"]] = ctx_ids[rows[:, 0]]
        for j, slot in enumerate("abcd", start=1):
            tokens[:, _POS[slot]] = num_ids[rows[:, j]]
        groups = {g: np.zeros((n, T), dtype=bool) for g in TOKEN_GROUPS}
        groups["context"][:, _POS["ctx"]] = True
        groups["motion_numbers"][:, [_POS["a"], _POS["b"]]] = True
        groups["color_numbers"][:, [_POS["c"], _POS["d"]]] = True
        groups["numbers"] = groups["motion_numbers"] | groups["color_numbers"]
        groups["answer"][:, _POS["answer"]] = True
        return TaskBatch(
            tokens=tokens,
            answer_pos=np.full(n, _POS["answer"], dtype=np.int64),
            target=labels["choice"],
            candidates=vocab.encode(list(SIDES)),
            groups=groups,
            labels=labels,
        )

    example = " ".join(_WORD_LAYOUT).format(ctx="motion", a=3, b=7, c=8, d=2) + "  ->  right"
    return Task("cdm", VERSION, len(vocab), T, sample, TOKEN_GROUPS, example, vocab)


def _text_task(tokenizer: str, max_number: int, min_gap: int, eval_fraction: float, readout: str = "next") -> Task:
    tok = load_tokenizer(tokenizer)
    parts = _partition(max_number, min_gap, eval_fraction)
    mask = readout == "mask"
    if mask and tok.mask_token is None:
        raise ValueError(f"cdm: readout 'mask' needs a tokenizer with a mask token; {tokenizer!r} has none")
    # Answer options: the single token that follows "Choice:" (" left" in GPT-2's BPE, "left" in WordPiece),
    # or that fills the mask ("left").
    candidates = []
    for side in SIDES:
        ids = tok(side if mask else " " + side, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ValueError(f"cdm: answer {side!r} is not a single token for tokenizer {tokenizer!r}: {ids}")
        candidates.append(ids[0])
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)

    def render(r: np.ndarray) -> tuple[str, dict[str, list[tuple[int, int]]]]:
        ctx, a, b, c, d = (int(v) for v in r)
        spans: dict[str, list[tuple[int, int]]] = {g: [] for g in TOKEN_GROUPS}
        text = "Context: "
        spans["context"].append((len(text), len(text) + len(CONTEXTS[ctx])))
        text += f"{CONTEXTS[ctx]}. "
        for modality, (x, y) in (("motion", (a, b)), ("color", (c, d))):
            text += f"{modality.capitalize()}: left "
            spans[f"{modality}_numbers"].append((len(text), len(text) + len(str(x))))
            text += f"{x}, right "
            spans[f"{modality}_numbers"].append((len(text), len(text) + len(str(y))))
            text += f"{y}. "
        text += "Choice:"
        spans["answer"].append((len(text) - 1, len(text)))
        if mask:
            text += " " + tok.mask_token
        spans["numbers"] = spans["motion_numbers"] + spans["color_numbers"]
        return text, spans

    def sample(n: int, split: str, seed: int) -> TaskBatch:
        rows = _draw(parts, n, split, seed)
        labels = _trials(rows)
        rendered = [render(r) for r in rows]
        enc = tok([t for t, _ in rendered], add_special_tokens=mask, return_offsets_mapping=True)
        T = max(len(ids) for ids in enc["input_ids"])
        if mask and any(len(ids) != T for ids in enc["input_ids"]):  # bidirectional: padding would be read
            raise ValueError(f"cdm: prompts of different lengths with tokenizer {tokenizer!r} (readout 'mask')")
        tokens = np.full((n, T), pad_id, dtype=np.int64)
        groups = {g: np.zeros((n, T), dtype=bool) for g in TOKEN_GROUPS}
        answer_pos = np.zeros(n, dtype=np.int64)
        for i, (ids, offsets) in enumerate(zip(enc["input_ids"], enc["offset_mapping"])):
            tokens[i, : len(ids)] = ids
            answer_pos[i] = ids.index(tok.mask_token_id) if mask else len(ids) - 1
            for g, spans in rendered[i][1].items():
                for s, e in spans:
                    for t, (ts, te) in enumerate(offsets):
                        if ts < e and te > s and te > ts:  # token overlaps the span (special tokens: empty)
                            groups[g][i, t] = True
        groups["answer"][:] = False
        groups["answer"][np.arange(n), answer_pos] = True
        return TaskBatch(tokens, answer_pos, labels["choice"], candidates, groups, labels,
                         texts=[t for t, _ in rendered], pad_id=pad_id)

    if mask:
        _check_equal_lengths(tok, render, max_number, tokenizer)
    probe = sample(1, "eval", 0)
    example, _ = render(np.array([0, 3, 7, 8, 2]))
    return Task("cdm", VERSION, len(tok), int(probe.tokens.shape[1]) + 4, sample, TOKEN_GROUPS,
                example + ("  ->  'right'" if mask else "  ->  ' right'"), tok)


def _check_equal_lengths(tok, render, max_number: int, tokenizer: str) -> None:
    """Raise ValueError unless every prompt has the same number of tokens.

    A bidirectional model reads right padding (no attention mask is passed), so masked readout needs
    equal lengths. Each slot (context, each number) is varied over all its values with the others fixed.
    """
    rows = [np.array([c, 0, 0, 0, 0]) for c in range(len(CONTEXTS))]
    for slot in range(1, 5):
        for v in range(max_number + 1):
            r = np.zeros(5, dtype=np.int64)
            r[slot] = v
            rows.append(r)
    lengths = {len(ids) for ids in tok([render(r)[0] for r in rows])["input_ids"]}
    if len(lengths) > 1:
        raise ValueError(f"cdm: with tokenizer {tokenizer!r} prompts have different lengths ({sorted(lengths)} "
                         f"tokens; e.g. a number 0..{max_number} is more than one token), so readout 'mask' would "
                         "read padding; lower max_number")


@TASKS.register(
    "cdm",
    params=(
        Param("vocab", "choice", default="words", choices=("words", "tokenizer"),
              doc="'words': one token per word and number (tiny models); 'tokenizer': text for a real tokenizer"),
        Param("tokenizer", "str", doc="tokenizer directory or hub id (vocab: tokenizer), e.g. gpt2"),
        Param("max_number", "int", default=9, min=1, max=20, doc="numbers are integers 0..max_number"),
        Param("min_gap", "int", default=1, min=1, doc="smallest |left - right| within a modality (harder when small)"),
        Param("eval_fraction", "float", default=0.2, min=0.01, max=0.99, doc="share of distinct trials held out for eval"),
        Param("readout", "choice", default="next", choices=("next", "mask"),
              doc="vocab tokenizer: answer as the next token after 'Choice:' (causal LM), or at a final mask "
                  "token with special tokens added (masked LM, e.g. BERT)"),
    ),
    version=VERSION,
    keyless_defaults={"readout": "next"},  # added later: cache keys of existing tasks stay as they were
    token_groups=TOKEN_GROUPS,
    labels=LABELS,
)
def make_cdm(vocab: str = "words", tokenizer: str | None = None, max_number: int = 9, min_gap: int = 1,
             eval_fraction: float = 0.2, readout: str = "next") -> Task:
    """Context-dependent decision making: answer with the larger side of the cued modality (Lin 2024)."""
    if min_gap < 1:
        raise ValueError(f"cdm: min_gap={min_gap} must be at least 1 (equal numbers would make the answer a tie)")
    if min_gap > max_number:
        raise ValueError(f"cdm: min_gap={min_gap} leaves no pairs with max_number={max_number}")
    if vocab == "words":
        if readout != "next":
            raise ValueError(f"cdm: readout {readout!r} needs vocab 'tokenizer' (a mask token of a real tokenizer)")
        return _word_task(max_number, min_gap, eval_fraction)
    if not tokenizer:
        raise ValueError("cdm: vocab 'tokenizer' needs a 'tokenizer' argument (directory or hub id)")
    return _text_task(tokenizer, max_number, min_gap, eval_fraction, readout)
