"""Entity tracking in boxes (Prakash et al. 2024), an auxiliary binding task, and their paired datasets.

`entity_tracking` (the evaluation format; word-level, one token per word):

    <s> The cup is in Box T , the key is in Box A , ... , the map is in Box D . Box A contains the   ->  key

`n_boxes` boxes (the paper uses 7), objects and labels distinct within a prompt, the query one of the box
labels. With `<s>` at position 0 the layout is the paper's (Llama's BOS included): box k's object sits at
7k + 2 and its label at 7k + 6, the final sentence ". Box Lq contains the" closes the prompt, so every eval
prompt has the same length (7 n + 5 tokens) and the same positions - what position-specific mean ablation
and per-position head groups need. The answer is read at the last token ("the").

The answer options (`candidates`) are all the objects the task draws from, so accuracy is an argmax over
the objects rather than the paper's argmax over the whole vocabulary. A model trained with answer loss puts
next to no mass on other tokens, so the two nearly agree; they are not the same measure.

Training curriculum: `min_boxes` / `max_boxes` let the *train* split draw a box count per prompt (prompts of
one batch are then right-padded, each with its own answer position); the *eval* split always uses exactly
`n_boxes`, so eval positions stay aligned.

Pretraining on the task's own text: with `train_queries` = boxes every box is queried and answered in each
train prompt, so next-token loss (`lm`) supervises a lookup per box rather than one per prompt; with
`repeat_objects` the train split draws each box's object independently (one may recur in another box), so
next-token loss on the context's objects is uniform noise rather than a reward for avoiding the objects
already present (which distinct objects teach, the opposite of the lookup). Eval prompts keep distinct
objects. docs/methods/prakash2024.md ("ci fixtures") measures what this buys.

`entity_binding` (auxiliary, for fine-tuning): the same binding of objects to letters in another surface
form, never the evaluation sentence, e.g. form `holds` "Box T holds the cup , Box A holds the key . Box A holds
the" -> key, or form `assign` "T = cup , A = key . A is" -> key (values: objects, or numbers 0..9).

All tasks here share one vocabulary, which starts with the `corpus` generator's (same ids), so a model can be
fine-tuned from one to another, or on `corpus` itself (a control fine-tune on unrelated text), without
touching its embeddings.

Paired datasets for interventions (functions, not registered tasks; `entity_pairs`): path-patching noise
prompts, the three desiderata of desiderata-based component masking, and a reference set for means.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from mechcheck.registry import TASKS, Param
from mechcheck.tasks import Task, TaskBatch, WordVocab
from mechcheck.tasks.corpus import corpus_vocabulary

__all__ = ["make_entity_tracking", "make_entity_binding", "entity_vocabulary", "VERSION", "OBJECTS", "LETTERS",
           "LABELS", "TOKEN_GROUPS"]

#: Bump whenever the generated data changes for the same arguments and seed (it is part of cache keys).
VERSION = "2"  # 2: the vocabulary gained the `sits` words (ids after the objects)
#: one-token nouns, none of them a word of the corpus vocabulary
OBJECTS = ("cup", "key", "map", "pen", "book", "ring", "coin", "bell", "lamp", "shoe", "hat", "doll", "ball",
           "fork", "bowl", "comb", "drum", "flag", "kite", "mask", "nail", "pipe", "rope", "sock", "tape", "vase",
           "wire", "bag", "box", "card", "disk", "egg", "fan", "gem", "jar", "leaf", "mug", "note", "pot", "toy")
LETTERS = tuple(chr(ord("A") + i) for i in range(26))
_TEMPLATE = ("<s>", "The", "the", "in", "Box", ",", "contains", "holds", "=")  # "is" and "." come from corpus
#: words of the `sits` form, after the objects so that every earlier id stays what it was
_SITS = ("My", "my", "sits", "crate", "Crate")
MAX_NUMBER = 9  # the corpus vocabulary's numbers 0..9 (values of `entity_binding` with values: numbers)
TOKEN_GROUPS = ("labels", "objects", "query_label", "answer")
LABELS = ("query_box", "query_label_pos", "prev_label_pos", "answer_pos", "n_boxes")
FORMS = ("contains", "holds", "assign", "sits")
#: forms whose value comes before its label (a label position can know its value: hints exist)
VALUE_FIRST = ("contains", "sits")


def entity_vocabulary() -> WordVocab:
    """The shared vocabulary: the corpus words (same ids), template words, letters A-Z, objects."""
    return WordVocab([*corpus_vocabulary(MAX_NUMBER).words[1:], *_TEMPLATE, *LETTERS, *OBJECTS, *_SITS])


def prompt_length(form: str, n: int, answered: int = 0) -> int:
    """Tokens of a prompt with `n` boxes and `answered` answered queries (the final answer excluded): contains
    7n + 5, holds 6n + 5, assign 4n + 3, plus 6 (assign: 4) per answered query."""
    return len(render(form, ["x"] * n, ["y"] * n, "y", (("y", "x"),) * answered)[0])


def render(form: str, values: list[str], labels: list[str], query: str,
           answered: tuple[tuple[str, str], ...] = ()) -> tuple[list[str], dict[str, object]]:
    """Words of one prompt and its positions: value / label position per box, query label, answer position.

    `answered`: (label, value) query sentences, with their answers, put between the context and the query.
    """
    words, vpos, lpos = ["<s>"], [], []
    for k, (v, lab) in enumerate(zip(values, labels)):
        if form in VALUE_FIRST:  # contains: "The cup is in Box T"; sits: "My cup sits in crate T" (same slots)
            det = ("The", "the") if form == "contains" else ("My", "my")
            words += [det[0]] if k == 0 else [",", det[1]]
            vpos.append(len(words))
            words += [v, "is", "in", "Box"] if form == "contains" else [v, "sits", "in", "crate"]
            lpos.append(len(words))
            words.append(lab)
        else:
            words += [] if k == 0 else [","]
            words += ["Box"] if form == "holds" else []
            lpos.append(len(words))
            words += [lab, "holds", "the"] if form == "holds" else [lab, "="]
            vpos.append(len(words))
            words.append(v)
    words += ["."]
    box = {"contains": ["Box"], "holds": ["Box"], "sits": ["Crate"], "assign": []}[form]
    tail = {"contains": ["contains", "the"], "holds": ["holds", "the"], "sits": ["holds", "my"], "assign": ["is"]}[form]
    for lab, v in answered:  # training only: earlier queries, answered, so next-token loss sees each
        words += [*box, lab, *tail, v, "."]
    qpos = len(words) + len(box)
    words += [*box, query, *tail]
    return words, {"values": vpos, "labels": lpos, "query": qpos, "answer": len(words) - 1}


@dataclass(frozen=True)
class Config:
    """A generator's arguments, validated; what every sampler of this module works from."""

    form: str = "contains"
    n_boxes: int = 7
    min_boxes: int | None = None
    max_boxes: int | None = None
    n_objects: int = 40
    n_labels: int = 26
    values: str = "objects"
    eval_fraction: float = 0.2
    train_queries: int = 1
    repeat_objects: bool = False
    #: a Hugging Face tokenizer (hub id, local directory or pkg: path) instead of the word vocabulary
    tokenizer: str | None = None

    def __post_init__(self) -> None:
        lo, hi = self.train_range
        if not 2 <= lo <= hi:
            raise ValueError(f"entity: need 2 <= min_boxes <= max_boxes, got {lo}..{hi}")
        most = max(hi, self.n_boxes)
        if self.n_labels < most or self.value_words_count < most + 1:
            raise ValueError(f"entity: {most} boxes need at least {most} labels and {most + 1} values "
                             f"(distinct per prompt, plus one for object-value pairs); have {self.n_labels} labels, "
                             f"{self.value_words_count} values")

    @property
    def train_range(self) -> tuple[int, int]:
        return (self.min_boxes or self.n_boxes, self.max_boxes or self.n_boxes)

    @property
    def value_words(self) -> list[str]:
        if self.values == "numbers":
            return [str(i) for i in range(MAX_NUMBER + 1)]
        if self.tokenizer:  # the objects that are one token for this tokenizer, as the paper's were for Llama
            from mechcheck.tasks.tokenizers import token_vocabulary

            return [w for w in OBJECTS if w in token_vocabulary(self.tokenizer).ids][: self.n_objects]
        return list(OBJECTS[: self.n_objects])

    @property
    def value_words_count(self) -> int:
        return len(self.value_words)

    @property
    def seq_len(self) -> int:
        most = max(self.n_boxes, self.train_range[1])
        return prompt_length(self.form, most, min(self.train_queries, most) - 1)


@dataclass(frozen=True)
class Row:
    """One prompt as indices: value index and label index per box, the queried box, the query label index."""

    values: tuple[int, ...]
    labels: tuple[int, ...]
    query: int
    query_label: int
    #: boxes queried and answered before the final query (train split with train_queries > 1 only)
    answered: tuple[int, ...] = ()

    def key(self) -> bytes:
        return np.array([len(self.values), *self.values, *self.labels, self.query], dtype=np.int16).tobytes()


def in_eval(row: Row, eval_fraction: float) -> bool:
    """Which split a prompt belongs to, by a stable hash of its content (Python's hash() is salted)."""
    digest = int.from_bytes(hashlib.blake2b(row.key(), digest_size=4).digest(), "little")
    return digest % 10_000 < int(round(eval_fraction * 10_000))


def split_rng(split: str, seed: int, salt: int) -> np.random.Generator:
    if split not in ("train", "eval"):
        raise ValueError(f"entity: unknown split {split!r} (allowed: train, eval)")
    return np.random.default_rng([seed, 0 if split == "train" else 1, salt])


def draw_row(cfg: Config, rng: np.random.Generator, split: str, n: int | None = None, query: int | None = None,
             labels: tuple[int, ...] | None = None, avoid_value: tuple[int, ...] = ()) -> Row:
    """A random valid prompt of `split` with `n` boxes (constraints: queried box, fixed labels, and a query
    value outside `avoid_value`); redrawn until its hash puts it in `split`."""
    for _ in range(10_000):
        k = n if n is not None else (cfg.n_boxes if split == "eval" else int(rng.integers(cfg.train_range[0],
                                                                                          cfg.train_range[1] + 1)))
        repeat = cfg.repeat_objects and split == "train"
        vals = tuple(int(v) for v in rng.choice(cfg.value_words_count, size=k, replace=repeat))
        labs = labels if labels is not None else tuple(int(v) for v in rng.choice(cfg.n_labels, size=k, replace=False))
        q = query if query is not None else int(rng.integers(0, k))
        if vals[q] in avoid_value:
            continue
        row = Row(vals, labs, q, labs[q])
        if in_eval(row, cfg.eval_fraction) != (split == "eval"):
            continue
        if split == "train" and cfg.train_queries > 1:
            others = [b for b in rng.permutation(k).tolist() if b != q]
            row = Row(vals, labs, q, labs[q], tuple(others[: min(cfg.train_queries, k) - 1]))
        return row
    raise RuntimeError("entity: could not draw a prompt of the requested split (eval_fraction too extreme?)")


def batch_of(cfg: Config, rows: list[Row]) -> TaskBatch:
    """Rows rendered into one right-padded `TaskBatch` with its token groups and labels."""
    from mechcheck.tasks.tokenizers import token_vocabulary

    vocab = token_vocabulary(cfg.tokenizer) if cfg.tokenizer else entity_vocabulary()
    value_words = cfg.value_words
    candidates = vocab.encode(value_words)
    n, T = len(rows), max(prompt_length(cfg.form, len(r.values), len(r.answered)) for r in rows)
    pad_id = vocab.pad_id if cfg.tokenizer else 0
    tokens = np.full((n, T), pad_id, dtype=np.int64)
    texts: list[str] = []
    groups = {g: np.zeros((n, T), dtype=bool) for g in TOKEN_GROUPS}
    lab = {k: np.zeros(n, dtype=np.int64) for k in LABELS}
    target = np.zeros(n, dtype=np.int64)
    for i, r in enumerate(rows):
        words, pos = render(cfg.form, [value_words[v] for v in r.values], [LETTERS[x] for x in r.labels],
                            LETTERS[r.query_label],
                            tuple((LETTERS[r.labels[b]], value_words[r.values[b]]) for b in r.answered))
        tokens[i, : len(words)] = vocab.encode(words)
        texts.append(" ".join(words[1:]))
        groups["labels"][i, pos["labels"]] = True
        groups["objects"][i, pos["values"]] = True
        groups["query_label"][i, pos["query"]] = True
        groups["answer"][i, pos["answer"]] = True
        lab["query_box"][i] = r.query
        lab["query_label_pos"][i] = pos["query"]
        # the query label's earlier occurrence; -1 when the label is not in the context (reference prompts)
        lab["prev_label_pos"][i] = pos["labels"][r.labels.index(r.query_label)] if r.query_label in r.labels else -1
        lab["answer_pos"][i] = pos["answer"]
        lab["n_boxes"][i] = len(r.values)
        target[i] = r.values[r.query]
    return TaskBatch(tokens, lab["answer_pos"].copy(), target, candidates, groups, lab,
                     texts=texts if cfg.tokenizer else None, pad_id=pad_id)


def hints(batch: TaskBatch) -> dict[str, np.ndarray]:
    """Training hints (`train.hints`), two kinds: each box's label position should already name the box's value
    (`value_at_label`), and the last position the query label (`query_label_at_last`). These are the two steps
    a tiny model does not find on its own (docs/methods/prakash2024.md); a hint says what a position should
    know, never where to attend. Per kind: (n, T) token ids, -100 where there is no hint."""
    value = np.full(batch.tokens.shape, -100, dtype=np.int64)
    # row-major masks: every row has as many labels as objects, both in box order, so they pair up
    value[batch.groups["labels"]] = batch.tokens[batch.groups["objects"]]
    query = np.full(batch.tokens.shape, -100, dtype=np.int64)
    rows = np.arange(len(batch))
    query[rows, batch.answer_pos] = batch.tokens[rows, batch.labels["query_label_pos"]]
    return {"value_at_label": value, "query_label_at_last": query}


def _task(name: str, cfg: Config, salt: int) -> Task:
    def sample(n: int, split: str, seed: int) -> TaskBatch:
        rng = split_rng(split, seed, salt)
        return batch_of(cfg, [draw_row(cfg, rng, split) for _ in range(n)])

    example = " ".join(render(cfg.form, cfg.value_words[:3], list("TAD"), "A")[0])
    if cfg.tokenizer:
        from mechcheck.tasks.tokenizers import token_vocabulary

        vocab = token_vocabulary(cfg.tokenizer)
        if len(cfg.value_words) < max(cfg.n_boxes, cfg.train_range[1]) + 1:
            raise ValueError(f"entity: tokenizer {cfg.tokenizer!r} has only {len(cfg.value_words)} single-token "
                             "objects; more boxes need more")
        vocab.encode(render(cfg.form, cfg.value_words[:1], list(LETTERS[: cfg.n_labels]), "A")[0])  # all one token
        return Task(name, VERSION, len(vocab.tokenizer), cfg.seq_len, sample, TOKEN_GROUPS,
                    f"{example}  ->  {cfg.value_words[1]}", vocab.tokenizer, None)
    return Task(name, VERSION, len(entity_vocabulary()), cfg.seq_len, sample, TOKEN_GROUPS,
                f"{example}  ->  {cfg.value_words[1]}", entity_vocabulary(),
                # a label before its value (holds, assign) cannot know the value yet: hints only where it follows
                hints if cfg.form in VALUE_FIRST else None)


_SHARED = (
    Param("n_boxes", "int", default=7, min=2, max=20, doc="boxes per prompt in the eval split (the paper: 7)"),
    Param("min_boxes", "int", min=2, max=20, doc="train split only: fewest boxes per prompt (default n_boxes)"),
    Param("max_boxes", "int", min=2, max=20, doc="train split only: most boxes per prompt (default n_boxes)"),
    Param("n_labels", "int", default=26, min=2, max=26, doc="box labels are the first n_labels letters A-Z"),
    Param("eval_fraction", "float", default=0.2, min=0.01, max=0.99, doc="share of distinct prompts held out"),
    Param("train_queries", "int", default=1, min=1, max=20,
          doc="train split only: query sentences per prompt, all but the last answered in the prompt (more "
              "supervised lookups per prompt with loss: lm)"),
)
_TOKENIZER = Param("tokenizer", "str",
                   doc="a Hugging Face tokenizer (hub id, local directory or pkg: path) instead of the word "
                       "vocabulary; every word must be one token (objects that are not are left out), so positions "
                       "stay the word layout's; <s> is its BOS (or CLS) token")
_REPEAT = Param("repeat_objects", "bool", default=False,
                doc="train split only: objects drawn with replacement (one may be in several boxes), so next-token "
                    "loss on the context carries no 'avoid the objects already present' signal")


def _mean_reference(args, n: int, seed: int, split: str = "eval"):
    """The reference set for position-specific means (query label randomised): `entity_pairs.mean_reference`."""
    from mechcheck.tasks.entity_pairs import mean_reference

    return mean_reference(args, n, seed, split)


def _counterfactual(args, n: int, seed: int, split: str = "eval"):
    """Path-patching pairs (`entity_pairs.counterfactual`): (clean, corrupt, corrupt positions). The noise prompt's
    query letter is random, so its "previous occurrence of the query label" is a random label position of it."""
    import numpy as np

    from mechcheck.tasks.entity_pairs import counterfactual

    pairs = counterfactual(args, n, seed, split)
    rng = np.random.default_rng([seed, 0x5EED])
    labels = pairs.source.groups["labels"]
    prev = np.array([rng.choice(np.flatnonzero(row[: int(q)])) for row, q in
                     zip(labels, pairs.source.labels["query_label_pos"])])
    return pairs.base, pairs.source, {"prev_label": prev}


def _desiderata(args, kind: str, n: int, seed: int, split: str = "eval"):
    """DCM pairs (`entity_pairs.desiderata`): (base, source, target index in the candidates)."""
    from mechcheck.tasks.entity_pairs import desiderata

    pairs = desiderata(args, kind, n, seed, split)
    return pairs.base, pairs.source, pairs.target_idx


@TASKS.register(
    "entity_tracking",
    params=(*_SHARED,
            Param("n_objects", "int", default=len(OBJECTS), min=3, max=len(OBJECTS), doc="objects drawn from"),
            _REPEAT, _TOKENIZER),
    version=VERSION,
    token_groups=TOKEN_GROUPS,
    labels=LABELS,
    reference=_mean_reference,
    counterfactual=_counterfactual,
    desiderata=_desiderata,
    desiderata_names=("positional", "object_value", "box_label_value"),
    # added later: cache keys of existing tasks stay as they were
    keyless_defaults={"repeat_objects": False, "tokenizer": None},
)
def make_entity_tracking(n_boxes: int = 7, min_boxes: int | None = None, max_boxes: int | None = None,
                         n_labels: int = 26, eval_fraction: float = 0.2, train_queries: int = 1,
                         n_objects: int = len(OBJECTS), repeat_objects: bool = False,
                         tokenizer: str | None = None) -> Task:
    """Entity tracking: which object is in the queried box (Prakash et al. 2024's box task)."""
    cfg = Config("contains", n_boxes, min_boxes, max_boxes, n_objects, n_labels, "objects", eval_fraction,
                 train_queries, repeat_objects, tokenizer)
    return _task("entity_tracking", cfg, 0xE7)


@TASKS.register(
    "entity_binding",
    params=(*_SHARED,
            Param("form", "choice", default="holds", choices=("holds", "assign", "sits"),
                  doc="'holds': Box T holds the cup ... Box T holds the; 'assign': T = cup ... T is; 'sits': My cup "
                      "sits in crate T ... Crate T holds my (entity_tracking's slots, other words)"),
            Param("values", "choice", default="objects", choices=("objects", "numbers"),
                  doc="what is bound to the letters: the entity task's objects, or numbers 0..9"),
            Param("n_objects", "int", default=len(OBJECTS), min=3, max=len(OBJECTS), doc="objects drawn from")),
    version=VERSION,
    token_groups=TOKEN_GROUPS,
    labels=LABELS,
)
def make_entity_binding(n_boxes: int = 7, min_boxes: int | None = None, max_boxes: int | None = None,
                        n_labels: int = 26, eval_fraction: float = 0.2, train_queries: int = 1,
                        form: str = "holds", values: str = "objects", n_objects: int = len(OBJECTS)) -> Task:
    """Auxiliary binding task (letter -> value lookup in another sentence form) for fine-tuning."""
    if form not in ("holds", "assign", "sits"):
        raise ValueError(f"entity_binding: unknown form {form!r} (allowed: holds, assign, sits)")
    cfg = Config(form, n_boxes, min_boxes, max_boxes, n_objects, n_labels, values, eval_fraction, train_queries)
    return _task("entity_binding", cfg, 0xB1)
