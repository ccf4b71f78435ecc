"""A generic synthetic corpus for pretraining small GPT-2s: numbers, comparisons, recall and copying, no CDM.

Lin 2024 compares GPT-2 *fine-tuned* on the context-dependent decision task (CDM) with GPT-2 trained from
scratch. Without the hub, "pretrained" has to be manufactured locally (docs/methods/lin2024.md): a model trained with
next-token loss on text that contains the *ingredients* of the task - reading numbers, comparing two
numbers, looking up the value bound to a word, copying - but never the task itself (a context cue that
selects which of two comparisons decides the answer).

The vocabulary starts with the word-level `cdm` vocabulary, in the same order, so token ids agree and a model
pretrained here can be fine-tuned on `cdm` (vocab: words, same max_number) without remapping embeddings.
Each example is a few sentences packed into one sequence; the last sentence is always a query with one
correct next word (a comparison, a lookup or a copy), which is the example's answer. Sentence kinds:

  compare   left 3 right 7 larger right .          (which side holds the larger number; no context cue)
  max       max 3 7 is 7 .                          (the larger number itself)
  less      3 less 7 yes .                          (is the first number smaller)
  recall    motion 3 color 8 recall color 8 .       (value bound to a key; keys include motion / color)
  copy      copy 3 5 1 then 3 5 1 .
  count     count 3 4 5 6 .

What makes it "not CDM": no sentence ever combines a context word with two comparisons, so the gating that
CDM needs is learnt only during fine-tuning. (A comparison sentence is one modality of a CDM trial; that is
the generic skill a pretrained model brings, as GPT-2 brings "larger" from English.)
"""

from __future__ import annotations

import numpy as np

from mechcheck.registry import TASKS, Param
from mechcheck.tasks import Task, TaskBatch, WordVocab
from mechcheck.tasks.cdm import word_vocabulary

__all__ = ["make_corpus", "VERSION", "KINDS"]

VERSION = "1"
KINDS = ("compare", "max", "less", "recall", "copy", "count")
_EXTRA = ("larger", "max", "is", "less", "yes", "no", "recall", "copy", "then", "count", "shape", "size", ".")
TOKEN_GROUPS = ("numbers", "answer")


def corpus_vocabulary(max_number: int) -> WordVocab:
    """The cdm word vocabulary (same ids) followed by the corpus' own words."""
    return WordVocab([*word_vocabulary(max_number).words[1:], *_EXTRA])


class _Writer:
    """Draws sentences as word lists; the last word of a query sentence (before '.') is its answer."""

    def __init__(self, rng: np.random.Generator, max_number: int) -> None:
        self.rng, self.top = rng, max_number

    def num(self) -> str:
        return str(int(self.rng.integers(0, self.top + 1)))

    def pair(self) -> tuple[int, int]:
        a, b = self.rng.choice(self.top + 1, size=2, replace=False)
        return int(a), int(b)

    def sentence(self, kind: str) -> list[str]:
        rng = self.rng
        if kind == "compare":
            a, b = self.pair()
            return ["left", str(a), "right", str(b), "larger", "left" if a > b else "right"]
        if kind == "max":
            a, b = self.pair()
            return ["max", str(a), str(b), "is", str(max(a, b))]
        if kind == "less":
            a, b = self.pair()
            return [str(a), "less", str(b), "yes" if a < b else "no"]
        if kind == "recall":
            keys = list(rng.choice(["motion", "color", "shape", "size"], size=2, replace=False))
            values = [self.num(), self.num()]
            k = int(rng.integers(0, 2))
            return [keys[0], values[0], keys[1], values[1], "recall", keys[k], values[k]]
        if kind == "copy":
            items = [self.num() for _ in range(int(rng.integers(2, 4)))]
            return ["copy", *items, "then", *items]
        start = int(rng.integers(0, max(1, self.top - 3)))
        return ["count", *[str(start + i) for i in range(min(4, self.top + 1 - start))]]


@TASKS.register(
    "corpus",
    params=(
        Param("max_number", "int", default=9, min=3, max=20, doc="numbers 0..max_number (match the cdm task)"),
        Param("seq_len", "int", default=32, min=12, max=256, doc="tokens per packed example"),
        Param("kinds", "strings", default=list(KINDS), choices=KINDS, doc="sentence kinds to draw from"),
    ),
    version=VERSION,
    token_groups=TOKEN_GROUPS,
    labels=(),  # packed text has no latent variables per example
)
def make_corpus(max_number: int = 9, seq_len: int = 32, kinds: list[str] | None = None) -> Task:
    """Generic pretraining text: packed sentences about numbers; the last one is a query (its answer)."""
    kinds = list(kinds or KINDS)
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise ValueError(f"corpus: unknown sentence kinds {bad} (allowed: {', '.join(KINDS)})")
    vocab = corpus_vocabulary(max_number)
    numbers = np.array(vocab.encode([str(i) for i in range(max_number + 1)]))
    queries = [k for k in kinds if k != "count"] or kinds
    # every answer a query can have, in a fixed order: the candidates of the answer metric
    answers = ["left", "right", "yes", "no", *[str(i) for i in range(max_number + 1)]]
    candidates = vocab.encode(answers)
    cand_index = {tok: i for i, tok in enumerate(candidates)}

    def sample(n: int, split: str, seed: int) -> TaskBatch:
        if split not in ("train", "eval"):
            raise ValueError(f"corpus: unknown split {split!r} (allowed: train, eval)")
        rng = np.random.default_rng([seed, 0 if split == "train" else 1, 0xC0])
        w = _Writer(rng, max_number)
        tokens = np.zeros((n, seq_len), dtype=np.int64)
        answer_pos = np.zeros(n, dtype=np.int64)
        target = np.zeros(n, dtype=np.int64)
        for i in range(n):
            query = w.sentence(queries[int(rng.integers(0, len(queries)))])
            words: list[str] = []
            while True:  # context sentences first, as many as fit before the query
                s = [*w.sentence(kinds[int(rng.integers(0, len(kinds)))]), "."]
                if len(words) + len(s) + len(query) > seq_len:
                    break
                words += s
            ids = vocab.encode(words + query)
            tokens[i, :len(ids) - 1] = ids[:-1]  # the prompt stops before the answer
            answer_pos[i] = len(ids) - 2
            target[i] = cand_index[ids[-1]]
        groups = {"numbers": np.isin(tokens, numbers), "answer": np.zeros_like(tokens, dtype=bool)}
        groups["answer"][np.arange(n), answer_pos] = True
        return TaskBatch(tokens, answer_pos, target, candidates, groups, labels={})

    return Task("corpus", VERSION, len(vocab), seq_len, sample, TOKEN_GROUPS,
                "left 3 right 7 larger right . motion 3 color 8 recall color  ->  8", vocab)
