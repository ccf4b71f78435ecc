"""Real tokenizers for the word-level tasks: loading one (`load_tokenizer`, shared by every task generator that
takes a `tokenizer` argument), and the entity tasks' words as single tokens of one (`TokenVocab`)."""

from __future__ import annotations

from mechcheck.errors import ClaimSkipped
from mechcheck.paths import is_pkg_path, resolve_pkg_path

__all__ = ["load_tokenizer", "TokenVocab", "token_vocabulary"]


def load_tokenizer(name: str):  # -> transformers.PreTrainedTokenizerFast
    """A fast Hugging Face tokenizer from a hub id, a local directory or a `pkg:` path (offset mappings are
    needed for token positions); the hub unreachable -> `ClaimSkipped`."""
    from mechcheck.models import resolve_local_or_hub

    from transformers import AutoTokenizer

    if is_pkg_path(name):  # files shipped in an installed package (missing package: skipped)
        where, local = str(resolve_pkg_path(name)), True
    else:
        where, local = resolve_local_or_hub(name)
    try:
        tok = AutoTokenizer.from_pretrained(where, local_files_only=local or None)
    except OSError as exc:
        if local:
            raise
        raise ClaimSkipped(f"tokenizer {name!r} is not available offline and the hub cannot be reached ({exc})") from exc
    if not tok.is_fast:
        raise ValueError(f"tokenizer {name!r} has no fast version (offset mapping is needed for token positions)")
    return tok


class TokenVocab:
    """The words of these tasks as single tokens of a real tokenizer: each word is encoded on its own, with the
    leading space it has inside a sentence, and kept only if that is one token, so every prompt keeps the word
    layout's positions. Position 0 (`<s>`) is the tokenizer's BOS token (its CLS token if it has no BOS)."""

    def __init__(self, name: str) -> None:
        from mechcheck.tasks.entity import OBJECTS, entity_vocabulary

        self.name, self.tokenizer = name, load_tokenizer(name)
        tok = self.tokenizer
        bos = tok.bos_token_id if tok.bos_token_id is not None else tok.cls_token_id
        if bos is None:
            raise ValueError(f"entity: tokenizer {name!r} has neither a BOS nor a CLS token for position 0")
        self.ids: dict[str, int] = {"<s>": int(bos)}
        for w in dict.fromkeys([*entity_vocabulary().words[1:], *OBJECTS]):
            if w == "<s>":
                continue
            got = tok(" " + w, add_special_tokens=False)["input_ids"]
            if len(got) == 1:
                self.ids[w] = int(got[0])
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)

    def encode(self, words: list[str]) -> list[int]:
        missing = [w for w in dict.fromkeys(words) if w not in self.ids]
        if missing:
            raise ValueError(f"entity: with tokenizer {self.name!r} the words {missing} are not single tokens, so "
                             "prompts would not keep their positions")
        return [self.ids[w] for w in words]


_TOKEN_VOCABS: dict[str, TokenVocab] = {}


def token_vocabulary(name: str) -> TokenVocab:
    if name not in _TOKEN_VOCABS:
        _TOKEN_VOCABS[name] = TokenVocab(name)
    return _TOKEN_VOCABS[name]
