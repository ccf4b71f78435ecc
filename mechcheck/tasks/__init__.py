"""Task generators: seeded data for training and evaluation, with the token positions a check needs.

A generator is a registered function ``make_task(**args) -> Task``. A `Task` knows its vocabulary (a small
word list, or a real tokenizer) and draws `TaskBatch`es; every batch records, per example, where the answer
is read and which positions belong to which token group ("numbers", "context", ...), so that checks such as
``attention_to`` never guess positions from strings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Task", "TaskBatch", "WordVocab"]


@dataclass
class TaskBatch:
    """`n` examples of a task, right-padded to a common length `T`.

    tokens:     (n, T) int64 prompt token ids; the answer is *not* part of the prompt
    answer_pos: (n,)   position whose next-token logits give the answer
    target:     (n,)   index of the correct option in `candidates`
    candidates: token ids of the answer options, in a fixed order
    groups:     name -> (n, T) bool mask of the positions of that token group
    labels:     latent variables per example (e.g. context, choice), as (n,) int arrays
    """

    tokens: np.ndarray
    answer_pos: np.ndarray
    target: np.ndarray
    candidates: list[int]
    groups: dict[str, np.ndarray]
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    texts: list[str] | None = None
    pad_id: int = 0

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def subset(self, idx: np.ndarray) -> TaskBatch:
        """The examples at `idx` (integer indices or a boolean mask; same candidates and padding)."""
        idx = np.asarray(idx)
        if idx.dtype == bool:  # a mask: iterating it below would index texts by True/False (1/0)
            idx = np.flatnonzero(idx)
        return TaskBatch(
            tokens=self.tokens[idx],
            answer_pos=self.answer_pos[idx],
            target=self.target[idx],
            candidates=list(self.candidates),
            groups={k: v[idx] for k, v in self.groups.items()},
            labels={k: v[idx] for k, v in self.labels.items()},
            texts=[self.texts[i] for i in idx] if self.texts is not None else None,
            pad_id=self.pad_id,
        )

    @property
    def answer_ids(self) -> np.ndarray:
        """(n,) token id of the correct answer."""
        return np.asarray(self.candidates)[self.target]


@dataclass
class Task:
    """A task generator bound to its arguments.

    `sample(n, split, seed)` is deterministic in (args, split, seed); the `train` and `eval` splits are
    disjoint by construction (each distinct prompt belongs to exactly one split).
    """

    name: str
    version: str
    vocab_size: int
    seq_len: int
    sample: Callable[[int, str, int], TaskBatch]
    #: the token groups every batch marks (what ``attention_to`` may name)
    token_groups: tuple[str, ...]
    #: a short human description of the prompt format, for reports
    example: str = ""
    #: `WordVocab` for word-level tasks, a Hugging Face tokenizer otherwise
    vocab: object | None = None
    #: training hints (`train.hints` of a fixture): batch -> {kind: (n, T) token ids that the residual stream at
    #: each position should already decode to at an intermediate layer, -100 where there is none}; None: no hints
    hints: Callable[[TaskBatch], dict[str, np.ndarray]] | None = None


class WordVocab:
    """A fixed word-level vocabulary: one token per word, id 0 is padding."""

    def __init__(self, words: list[str]) -> None:
        if len(set(words)) != len(words):
            raise ValueError("duplicate words in vocabulary")
        self.words = ["<pad>", *words]
        self.ids = {w: i for i, w in enumerate(self.words)}

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, words: list[str]) -> list[int]:
        return [self.ids[w] for w in words]

    def decode(self, ids: list[int]) -> str:
        return " ".join(self.words[i] for i in ids if i != 0)
