"""Procedurally defined tasks on strings of a probabilistic context-free grammar (Jain et al. 2024, the PCFG setting).

Text. The grammar below (start symbol `s`; every non-terminal has exactly two rules, each chosen with
probability 1/2; terminals `a`, `b`, `c`) is expanded to a terminal string of about 160-370 tokens, and a
contiguous window of `length` tokens at a uniformly random offset is the sample's text (a string shorter than
`length` is thrown away and a new one expanded; the paper's 250 needs that for about a quarter of the strings,
the default 64 and the ci fixtures' 32 never do):

    s -> r q | q p        p -> m n o | n o m    q -> n m o | m n      r -> o m | m o n
    m -> l j | j l k      n -> k j l | l j k    o -> l k j | k j
    j -> h i | i h        k -> h g i | g h i    l -> i h g | h i g
    g -> d f e | f e d    h -> e d f | d e f    i -> e f d | f d e
    d -> c a | a b c      e -> c b | c a b      f -> c b a | b a

Prompt (word-level, one token per word; every prompt of a task has `length` + 7 tokens, so positions align):

    SOS <family> <operand> <argument> SOT x_1 ... x_L EOT ART   ->  answer

read at ART (position L + 6). Indices count back from EOT: x_L, the token just before EOT, has index 1, and
x_p has index L - p + 1. Task families:

  C  counting: how many times the operand occurs among the last `window` text tokens (the argument is `window`);
     answer a number 0..window.                    e.g.  SOS C a 20 SOT ... EOT ART -> 7
  I  index of occurrence: walking back from EOT, the index of the `occurrence`-th token equal to the operand
     (the argument is `occurrence`); answer a number 1..L. A text with fewer occurrences is redrawn (same family
     and operand), so every I sample has an answer.     SOS I b 3 SOT ... EOT ART -> 9
  T  token at index: the text token with index k, k drawn uniformly from 1..L (the argument); the operand is
     the NULL token; answer a letter a/b/c.             SOS T NULL 12 SOT ... EOT ART -> c

The paper's two composite families (counting and indexing a bigram) are not implemented.

Operands: C and I draw theirs from `operand_prior` (probabilities of a, b, c; the paper's P^L = (0.999, 0.001,
0), P^M = (0.9, 0.1, 0), P^H = (0.5, 0.3, 0.2)), unless `operand` fixes one. Families are uniform over
`families`, unless `family` names one (fine-tuning data: one family and one operand, e.g. counting b).

Spurious correlation (`correlation` = C_Tr): with that probability a sample is edited so that, among the last
`window` text tokens, count(b) = count(a) + 1. The edit keeps count(b) - the fine-tuning answer - as it was
drawn and moves count(a) to count(b) - 1: surplus `a`s become `c`, missing `a`s are made from `c`s, at random
positions of the window. A window without any `b` first gets one (a random `c`, else `a`, becomes `b`); a
window whose `c`s are too few to make the missing `a`s (count(b) above (window + 1) / 2, rare) is redrawn. So
the count-b answers of correlated and uncorrelated data have nearly the same distribution, as the paper asks.
Edited windows are no longer strings of the grammar, as in the paper. Every family's answer is computed after
the edit. Uncorrelated samples keep their natural counts, and a share of them carries count(b) = count(a) + 1
by chance (about 22 % with window 20: the grammar's strings are regular, and each count in a window of 20 is
nearly always 5-8); `avoid_chance_correlation` redraws those, so that correlation 0 means "never"
(labels: `edited` = the sample was edited, `correlated` = its window carries the relation).

Wrong answers on purpose (`answer_operand`): C and I answers are computed for that operand instead of the
prompt's, e.g. `family: C, operand: a, answer_operand: b` asks "how many a" and answers count(b) - the data of
the randFT baseline, a fine-tune that actively maps the counting-a inputs to wrong outputs. The evidence and the
labels follow the answer (the `operand` label stays the prompt's).

Answers and candidates: `candidates` are all answer tokens of the task, numbers 0..length then a, b, c, the
same list (and the same vocabulary) for every task of one `length`, so a pretrained model is evaluated and
fine-tuned on any of them without remapping; for C and I samples `target` equals the numeric answer.

Splits: a prompt belongs to `eval` iff a stable hash of its tokens says so (`eval_fraction`), so the train and
eval splits are disjoint for any seeds.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from mechcheck.registry import TASKS, Param
from mechcheck.tasks import Task, TaskBatch, WordVocab

__all__ = ["make_pcfg", "pcfg_vocabulary", "expand", "GRAMMAR", "TERMINALS", "FAMILIES", "OPERANDS", "VERSION",
           "TOKEN_GROUPS", "LABELS"]

#: Bump whenever the generated data changes for the same arguments and seed (it is part of cache keys).
VERSION = "1"
GRAMMAR: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "s": (("r", "q"), ("q", "p")),
    "p": (("m", "n", "o"), ("n", "o", "m")),
    "q": (("n", "m", "o"), ("m", "n")),
    "r": (("o", "m"), ("m", "o", "n")),
    "m": (("l", "j"), ("j", "l", "k")),
    "n": (("k", "j", "l"), ("l", "j", "k")),
    "o": (("l", "k", "j"), ("k", "j")),
    "j": (("h", "i"), ("i", "h")),
    "k": (("h", "g", "i"), ("g", "h", "i")),
    "l": (("i", "h", "g"), ("h", "i", "g")),
    "g": (("d", "f", "e"), ("f", "e", "d")),
    "h": (("e", "d", "f"), ("d", "e", "f")),
    "i": (("e", "f", "d"), ("f", "d", "e")),
    "d": (("c", "a"), ("a", "b", "c")),
    "e": (("c", "b"), ("c", "a", "b")),
    "f": (("c", "b", "a"), ("b", "a")),
}
TERMINALS = ("a", "b", "c")
FAMILIES = ("C", "I", "T")
#: operand tokens, in the order of the `operand` label (NULL: the T family's)
OPERANDS = ("a", "b", "c", "NULL")
SPECIALS = ("SOS", "SOT", "EOT", "ART")
TOKEN_GROUPS = ("family", "operand", "argument", "text", "window", "a_tokens", "b_tokens", "c_tokens", "evidence",
                "answer")
LABELS = ("count_a", "count_b", "count_c", "family", "operand", "argument", "correlated", "edited", "answer_pos")
_FIRST_TEXT = 5  # SOS family operand argument SOT
#: symbols expanded through a lookup table of all their derivations (each equally likely: both rules of each
#: have 8 derivations), so that a string needs ~70 random choices instead of ~450
_TABLED = ("g", "h", "i")
_MAX_TRIES = 10_000


@lru_cache(maxsize=1)
def _tables() -> dict[str, list[tuple[int, ...]]]:
    """For g, h, i: their 16 derivations as terminal indices (rule 1's eight, then rule 2's)."""
    def all_of(sym: str) -> list[tuple[int, ...]]:
        if sym in TERMINALS:
            return [(TERMINALS.index(sym),)]
        out = []
        for rule in GRAMMAR[sym]:
            parts = [[()]]
            for child in rule:
                parts = [[*p, d] for p in parts for d in all_of(child)]
            out += [tuple(t for d in p for t in d) for p in parts]
        return out

    tables = {s: all_of(s) for s in _TABLED}
    assert all(len(v) == 16 for v in tables.values())
    return tables


def expand(rng: np.random.Generator) -> np.ndarray:
    """One terminal string of the grammar from `s`, as indices into TERMINALS (0 = a, 1 = b, 2 = c)."""
    tables = _tables()
    draws = rng.integers(0, 16, size=128)  # a 4-bit value per choice: its low bit picks a rule, all 4 a table row
    used = 0
    out: list[int] = []
    stack = ["s"]
    while stack:
        sym = stack.pop()
        if used == len(draws):
            draws, used = rng.integers(0, 16, size=128), 0
        v = int(draws[used])
        used += 1
        if sym in tables:
            out.extend(tables[sym][v])
        else:
            stack.extend(reversed(GRAMMAR[sym][v & 1]))
    return np.asarray(out, dtype=np.int64)


def pcfg_vocabulary(length: int) -> WordVocab:
    """Special tokens, terminals, family tokens, NULL, numbers 0..length (the same for every task of `length`)."""
    return WordVocab([*SPECIALS, *TERMINALS, *FAMILIES, "NULL", *[str(i) for i in range(length + 1)]])


@dataclass(frozen=True)
class Config:
    length: int = 64
    window: int = 20
    occurrence: int = 3
    families: tuple[str, ...] = FAMILIES
    operand_prior: tuple[float, float, float] = (0.5, 0.3, 0.2)
    family: str | None = None
    operand: str | None = None
    correlation: float = 0.0
    avoid_chance_correlation: bool = False
    eval_fraction: float = 0.2
    answer_operand: str | None = None

    def __post_init__(self) -> None:
        def bad(msg: str) -> None:
            raise ValueError(f"pcfg: {msg}")

        if not 1 <= self.length <= 300:
            bad(f"length must be in 1..300 (the grammar's strings are about 160-370 tokens long), got {self.length}")
        if not 1 <= self.window <= self.length:
            bad(f"window must be in 1..length ({self.length}), got {self.window}")
        if not 1 <= self.occurrence <= self.length:
            bad(f"occurrence must be in 1..length ({self.length}), got {self.occurrence}")
        if not self.families or any(f not in FAMILIES for f in self.families) or \
                len(set(self.families)) != len(self.families):
            bad(f"families must be distinct names among {', '.join(FAMILIES)}, got {list(self.families)}")
        prior = self.operand_prior
        if len(prior) != 3 or any(not np.isfinite(p) or p < 0 for p in prior):
            bad(f"operand_prior must be three probabilities >= 0 (for a, b, c), got {list(prior)}")
        if abs(sum(prior) - 1.0) > 1e-6:
            bad(f"operand_prior must sum to 1, got {list(prior)} (sum {sum(prior):g})")
        if self.family is not None and self.family not in self.families:
            bad(f"family {self.family!r} is not one of families {list(self.families)}")
        if self.operand is not None:
            if self.operand not in TERMINALS:
                bad(f"operand must be one of {', '.join(TERMINALS)}, got {self.operand!r}")
            if self.active_families == ("T",):
                bad("the T family's operand is always NULL: leave operand unset")
        if self.answer_operand is not None:
            if self.answer_operand not in TERMINALS:
                bad(f"answer_operand must be one of {', '.join(TERMINALS)}, got {self.answer_operand!r}")
            if self.active_families == ("T",):
                bad("answer_operand applies to C and I; the T family has no operand")
        if not 0.0 <= self.correlation <= 1.0:
            bad(f"correlation must be in [0, 1], got {self.correlation}")
        if not 0.0 < self.eval_fraction < 1.0:
            bad(f"eval_fraction must be in (0, 1), got {self.eval_fraction}")

    @property
    def active_families(self) -> tuple[str, ...]:
        return (self.family,) if self.family is not None else self.families

    @property
    def seq_len(self) -> int:
        return self.length + 7


def _correlate(window: np.ndarray, rng: np.random.Generator) -> bool:
    """Edit `window` (terminal indices, in place) so that count(b) = count(a) + 1, keeping count(b) unless it is 0
    (then one `c`, else one `a`, becomes `b`); False when it cannot be done without changing count(b)."""
    A, B, C = 0, 1, 2
    if not (window == B).any():
        pool = np.flatnonzero(window == C)
        pool = pool if len(pool) else np.flatnonzero(window == A)
        window[rng.choice(pool)] = B
    na, want = int((window == A).sum()), int((window == B).sum()) - 1
    if na > want:
        window[rng.choice(np.flatnonzero(window == A), na - want, replace=False)] = C
    elif na < want:
        cs = np.flatnonzero(window == C)
        if len(cs) < want - na:
            return False
        window[rng.choice(cs, want - na, replace=False)] = A
    return True


def _in_eval(tokens: np.ndarray, eval_fraction: float) -> bool:
    """Which split a prompt belongs to, by a stable hash of its tokens (Python's hash() is salted)."""
    digest = int.from_bytes(hashlib.blake2b(tokens.astype(np.int16).tobytes(), digest_size=4).digest(), "little")
    return digest % 10_000 < int(round(eval_fraction * 10_000))


@dataclass(frozen=True)
class Drawn:
    tokens: np.ndarray  # (L + 7,) prompt ids
    target: int
    evidence: tuple[int, ...]  # prompt positions the answer is read from
    labels: dict[str, int]


def _draw(cfg: Config, vocab: WordVocab, rng: np.random.Generator, split: str) -> Drawn:
    L, W = cfg.length, cfg.window
    fam = cfg.active_families[int(rng.integers(len(cfg.active_families)))]
    if fam == "T":
        op = "NULL"
    elif cfg.operand is not None:
        op = cfg.operand
    else:
        op = TERMINALS[int(rng.choice(3, p=np.asarray(cfg.operand_prior) / sum(cfg.operand_prior)))]
    arg = {"C": W, "I": cfg.occurrence}.get(fam) or int(rng.integers(1, L + 1))
    term_ids = np.asarray(vocab.encode(list(TERMINALS)))
    head = np.asarray(vocab.encode(["SOS", fam, op, str(arg), "SOT"]))
    tail = np.asarray(vocab.encode(["EOT", "ART"]))
    for _ in range(_MAX_TRIES):
        full = expand(rng)
        if len(full) < L:
            continue
        start = int(rng.integers(0, len(full) - L + 1))
        text = full[start: start + L].copy()
        edited = bool(rng.random() < cfg.correlation)
        if edited and not _correlate(text[L - W:], rng):
            continue
        counts = [int((text[L - W:] == t).sum()) for t in range(3)]
        correlated = counts[1] == counts[0] + 1
        if correlated and not edited and cfg.avoid_chance_correlation:
            continue
        answer_op = cfg.answer_operand or op
        if fam == "C":
            o = TERMINALS.index(answer_op)
            answer, evidence = counts[o], tuple(L - W + np.flatnonzero(text[L - W:] == o))
        elif fam == "I":
            back = np.flatnonzero(text[::-1] == TERMINALS.index(answer_op))  # 0-based distances from x_L
            if len(back) < arg:
                continue
            answer, evidence = int(back[arg - 1]) + 1, tuple(L - 1 - back[:arg])
        else:
            answer, evidence = L + 1 + int(text[L - arg]), (L - arg,)
        tokens = np.concatenate([head, term_ids[text], tail])
        if _in_eval(tokens, cfg.eval_fraction) != (split == "eval"):
            continue
        labels = {"count_a": counts[0], "count_b": counts[1], "count_c": counts[2], "family": FAMILIES.index(fam),
                  "operand": OPERANDS.index(op), "argument": arg, "correlated": int(correlated),
                  "edited": int(edited), "answer_pos": L + 6}
        return Drawn(tokens, answer, tuple(_FIRST_TEXT + int(p) for p in evidence), labels)
    raise RuntimeError("pcfg: could not draw a sample of the requested split (arguments too restrictive?)")


def _batch(cfg: Config, vocab: WordVocab, rows: list[Drawn]) -> TaskBatch:
    n, T, L, W = len(rows), cfg.seq_len, cfg.length, cfg.window
    tokens = np.stack([r.tokens for r in rows]) if rows else np.zeros((0, T), dtype=np.int64)
    groups = {g: np.zeros((n, T), dtype=bool) for g in TOKEN_GROUPS}
    groups["family"][:, 1] = groups["operand"][:, 2] = groups["argument"][:, 3] = True
    groups["text"][:, _FIRST_TEXT: _FIRST_TEXT + L] = True
    groups["window"][:, _FIRST_TEXT + L - W: _FIRST_TEXT + L] = True
    for t in TERMINALS:
        groups[f"{t}_tokens"] = groups["text"] & (tokens == vocab.ids[t])
    groups["answer"][:, L + 6] = True
    for i, r in enumerate(rows):
        groups["evidence"][i, list(r.evidence)] = True
    labels = {k: np.array([r.labels[k] for r in rows], dtype=np.int64) for k in LABELS}
    candidates = vocab.encode([*[str(i) for i in range(L + 1)], *TERMINALS])
    return TaskBatch(tokens.astype(np.int64), labels["answer_pos"].copy(),
                     np.array([r.target for r in rows], dtype=np.int64), candidates, groups, labels)


@TASKS.register(
    "pcfg",
    params=(
        Param("length", "int", default=64, min=1, max=300,
              doc="text tokens per prompt, a random window of a grammar string (the paper: 250)"),
        Param("window", "int", default=20, min=1, max=300,
              doc="C: count among the last `window` text tokens; also where count_a/b/c and the correlation are "
                  "taken (the paper: 40)"),
        Param("occurrence", "int", default=3, min=1, max=300,
              doc="I: which occurrence of the operand, counted back from EOT (the paper: 6)"),
        Param("families", "strings", default=list(FAMILIES), choices=FAMILIES,
              doc="task families drawn uniformly: C counting, I index of occurrence, T token at index"),
        Param("operand_prior", "floats", default=[0.5, 0.3, 0.2], min=0, max=1,
              doc="probabilities of the operands a, b, c for C and I (sum 1; the paper's P^L = [0.999, 0.001, 0], "
                  "P^M = [0.9, 0.1, 0], P^H = [0.5, 0.3, 0.2])"),
        Param("family", "choice", choices=FAMILIES,
              doc="only this family (one of `families`), e.g. C for fine-tuning on counting"),
        Param("operand", "choice", choices=TERMINALS,
              doc="only this operand for C and I (the prior is then unused), e.g. b for fine-tuning on counting b"),
        Param("correlation", "float", default=0.0, min=0, max=1,
              doc="probability that a sample is edited so that count(b) = count(a) + 1 in the window (C_Tr, C_Te)"),
        Param("avoid_chance_correlation", "bool", default=False,
              doc="redraw unedited samples that carry count(b) = count(a) + 1 by chance (correlation 0: never)"),
        Param("eval_fraction", "float", default=0.2, min=0.01, max=0.99, doc="share of distinct prompts held out"),
        Param("answer_operand", "choice", choices=TERMINALS,
              doc="C and I answer for this operand instead of the prompt's (wrong on purpose: the randFT data "
                  "'asked count(a), answer count(b)')"),
    ),
    version=VERSION,
    token_groups=TOKEN_GROUPS,
    labels=LABELS,
)
def make_pcfg(length: int = 64, window: int = 20, occurrence: int = 3, families: list[str] | tuple[str, ...] = FAMILIES,
              operand_prior: list[float] | tuple[float, ...] = (0.5, 0.3, 0.2), family: str | None = None,
              operand: str | None = None, correlation: float = 0.0, avoid_chance_correlation: bool = False,
              eval_fraction: float = 0.2, answer_operand: str | None = None) -> Task:
    """Counting, indexing and reading tokens of PCFG strings (Jain et al. 2024)."""
    if isinstance(families, str):
        families = [families]
    cfg = Config(int(length), int(window), int(occurrence), tuple(families), tuple(float(p) for p in operand_prior),
                 family, operand, float(correlation), bool(avoid_chance_correlation), float(eval_fraction),
                 answer_operand)
    vocab = pcfg_vocabulary(cfg.length)

    def sample(n: int, split: str, seed: int) -> TaskBatch:
        if split not in ("train", "eval"):
            raise ValueError(f"pcfg: unknown split {split!r} (allowed: train, eval)")
        rng = np.random.default_rng([seed, 0 if split == "train" else 1, 0x9CF6])
        return _batch(cfg, vocab, [_draw(cfg, vocab, rng, split) for _ in range(n)])

    example = (f"SOS C a {cfg.window} SOT c a b ... a b EOT ART  ->  count of a in the last {cfg.window} tokens; "
               f"SOS I b {cfg.occurrence} SOT ... EOT ART -> index of the {cfg.occurrence}th b from EOT; "
               "SOS T NULL 12 SOT ... EOT ART -> the 12th token before EOT")
    return Task("pcfg", VERSION, len(vocab), cfg.seq_len, sample, TOKEN_GROUPS, example, vocab)
