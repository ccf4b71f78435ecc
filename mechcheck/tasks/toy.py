"""`copy_first`: a known-answer task for testing the harness itself.

Prompt: a source token (A or B), then filler tokens, then "?"; the answer is the source token.
    A f2 f0 f3 ?   ->  A
A model can only answer by moving information from position 0 to the last position, i.e. through attention:
`mechcheck.known_answer.single_head_copy_model` builds a GPT-2 in which exactly one head does that, so a claim
about that head must pass and a claim about any other head must fail.

`copy_wrapped`: the same prompts with two more answer tokens A' and B' (ids after copy_first's, as
`mechcheck.known_answer.wrapper_model` has them) and the candidates [A, B, A', B']; `answer: source` asks for the
source token (the capability the wrapper hides), `answer: primed` for its primed twin (A -> A', B -> B': the
wrapped, "fine-tuned" behaviour). For testing the pruning experiments on the known-answer wrapper.
"""

from __future__ import annotations

import hashlib

import numpy as np

from mechcheck.registry import TASKS, Param
from mechcheck.tasks import Task, TaskBatch, WordVocab

__all__ = ["make_copy_first", "make_copy_wrapped", "VERSION"]

VERSION = "1"
N_FILLERS = 4
TOKEN_GROUPS = ("source", "filler", "answer")


def _copy_counterfactual(args, n: int, seed: int, split: str = "eval"):
    """Path-patching pairs for copy_first: each prompt and the same prompt with the source token swapped (the
    other answer); (clean, corrupt, corrupt positions)."""
    clean = make_copy_first(**args).sample(n, split, seed)
    corrupt = clean.subset(np.arange(n))
    a, b = clean.candidates
    corrupt.tokens = corrupt.tokens.copy()
    corrupt.tokens[:, 0] = np.where(clean.tokens[:, 0] == a, b, a)
    corrupt.target = 1 - clean.target
    return clean, corrupt, None


def _copy_desiderata(args, kind: str, n: int, seed: int, split: str = "eval"):
    """DCM pairs for copy_first (known answers): each prompt and its swapped twin; the target is the source's
    answer (`source_answer`: only the head carrying the answer should be patched) or the base's own
    (`base_answer`: nothing should be)."""
    clean, corrupt, _ = _copy_counterfactual(args, n, seed, split)
    if kind not in ("source_answer", "base_answer"):
        raise ValueError(f"copy_first: unknown desideratum {kind!r} (allowed: source_answer, base_answer)")
    return clean, corrupt, (corrupt.target if kind == "source_answer" else clean.target)


@TASKS.register(
    "copy_first",
    params=(Param("length", "int", default=6, min=3, max=64, doc="prompt length in tokens"),),
    version=VERSION,
    token_groups=TOKEN_GROUPS,
    labels=("source",),
    counterfactual=_copy_counterfactual,
    desiderata=_copy_desiderata,
    desiderata_names=("source_answer", "base_answer"),
)
def make_copy_first(length: int = 6) -> Task:
    """Copy the first token to the answer position (a known-answer task for harness tests)."""
    vocab = WordVocab(["A", "B", *[f"f{i}" for i in range(N_FILLERS)], "?"])
    a_id, b_id, q_id = vocab.ids["A"], vocab.ids["B"], vocab.ids["?"]
    filler_ids = np.array([vocab.ids[f"f{i}"] for i in range(N_FILLERS)])

    def in_eval(rows: np.ndarray) -> np.ndarray:
        return np.array([hashlib.blake2b(r.tobytes(), digest_size=2).digest()[0] < 51 for r in rows])  # ~20 %

    def sample(n: int, split: str, seed: int) -> TaskBatch:
        if split not in ("train", "eval"):
            raise ValueError(f"copy_first: unknown split {split!r} (allowed: train, eval)")
        rng = np.random.default_rng([seed, 0 if split == "train" else 1, 0xC0])
        rows = np.empty((0, length - 1), dtype=np.int64)
        while len(rows) < n:  # rejection-sample rows of the requested split
            cand = np.column_stack([rng.integers(0, 2, 4 * n), rng.integers(0, N_FILLERS, (4 * n, length - 2))])
            cand = cand[in_eval(cand) == (split == "eval")]
            rows = np.concatenate([rows, cand])[:n]
        target = rows[:, 0]
        tokens = np.column_stack([np.where(target == 0, a_id, b_id), filler_ids[rows[:, 1:]], np.full(n, q_id)])
        groups = {g: np.zeros((n, length), dtype=bool) for g in TOKEN_GROUPS}
        groups["source"][:, 0] = True
        groups["filler"][:, 1:-1] = True
        groups["answer"][:, -1] = True
        return TaskBatch(tokens.astype(np.int64), np.full(n, length - 1, dtype=np.int64), target.astype(np.int64),
                         [a_id, b_id], groups, {"source": target.astype(np.int64)})

    return Task("copy_first", VERSION, len(vocab), length, sample, TOKEN_GROUPS, "A f2 f0 f3 ?  ->  A", vocab)


@TASKS.register(
    "copy_wrapped",
    params=(Param("length", "int", default=6, min=3, max=64, doc="prompt length in tokens"),
            Param("answer", "choice", default="source", choices=("source", "primed"),
                  doc="the source token (A / B) or its primed twin (A' / B')")),
    version=VERSION,
    token_groups=TOKEN_GROUPS,
    labels=("source",),
)
def make_copy_wrapped(length: int = 6, answer: str = "source") -> Task:
    """copy_first's prompts, answered with the source token or its primed twin among [A, B, A', B'] (module
    docstring)."""
    base = make_copy_first(length)
    vocab = WordVocab([*base.vocab.words[1:], "A'", "B'"])
    primed = [vocab.ids["A'"], vocab.ids["B'"]]
    offset = 2 if answer == "primed" else 0

    def sample(n: int, split: str, seed: int) -> TaskBatch:
        b = base.sample(n, split, seed)
        b.candidates = [*b.candidates, *primed]
        b.target = b.target + offset
        return b

    return Task("copy_wrapped", VERSION, len(vocab), length, sample, TOKEN_GROUPS, "A f2 f0 f3 ?  ->  A (or A')",
                vocab)
