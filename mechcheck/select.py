"""Choosing claims the way pytest chooses tests: ``-k EXPR`` (keyword expression) and ``--tag T``.

A keyword expression is words joined by ``and``, ``or``, ``not`` and parentheses, with pytest's precedence
(``not`` binds tightest, then ``and``, then ``or``). A word matches a claim when it is a case-insensitive
substring of the claim's id, of its file's stem, or of one of its tags: ``-k "ablation and not lin2024"``.
The parser is our own (a few lines of recursive descent) rather than pytest's private one, so `mechcheck`
does not depend on pytest internals; a malformed expression is a `SpecError` on ``<command line>`` that says
what was expected where.

``--tag T`` (repeatable) keeps the claims that carry any of the given tags, exactly as written; with both,
a claim must satisfy both.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from mechcheck.errors import SpecError

__all__ = ["select_claims", "keyword_matcher", "claim_names"]

#: a match function: lower-cased names of a claim -> does the expression hold
Matcher = Callable[[Sequence[str]], bool]

_KEYWORDS = ("and", "or", "not")
_TOKEN = re.compile(r"\s*(?:(?P<paren>[()])|(?P<word>[^\s()]+))")


def claim_names(claim: Any) -> list[str]:
    """What a keyword can match in a claim: its id, the stem of its file, and its tags."""
    return [claim.id, Path(claim.file).stem, *claim.tags]


def _error(expr: str, message: str) -> SpecError:
    return SpecError(f"invalid keyword expression {expr!r}: {message}", file="<command line>", field_path="-k")


def _tokens(expr: str) -> list[tuple[str, int]]:
    """(token, column) pairs; column is 1-based, as an editor shows it."""
    out, pos = [], 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None:  # only trailing blanks are left
            break
        text = m.group("paren") or m.group("word")
        out.append((text, m.start(m.lastgroup) + 1))
        pos = m.end()
    return out


class _Parser:
    """Recursive descent over: or := and ('or' and)*; and := not ('and' not)*; not := 'not' not | atom;
    atom := '(' or ')' | word."""

    def __init__(self, expr: str) -> None:
        self.expr = expr
        self.tokens = _tokens(expr)
        self.i = 0

    def peek(self) -> str | None:
        return self.tokens[self.i][0] if self.i < len(self.tokens) else None

    def where(self) -> str:
        if self.i < len(self.tokens):
            text, col = self.tokens[self.i]
            return f"{text!r} at column {col}"
        return "the end of the expression"

    def parse(self) -> Matcher:
        if not self.tokens:
            raise _error(self.expr, "it is empty")
        matcher = self.or_()
        if self.i < len(self.tokens):
            raise _error(self.expr, f"expected 'and', 'or' or the end, got {self.where()}")
        return matcher

    def or_(self) -> Matcher:
        parts = [self.and_()]
        while self.peek() == "or":
            self.i += 1
            parts.append(self.and_())
        return parts[0] if len(parts) == 1 else (lambda names: any(p(names) for p in parts))

    def and_(self) -> Matcher:
        parts = [self.not_()]
        while self.peek() == "and":
            self.i += 1
            parts.append(self.not_())
        return parts[0] if len(parts) == 1 else (lambda names: all(p(names) for p in parts))

    def not_(self) -> Matcher:
        if self.peek() == "not":
            self.i += 1
            inner = self.not_()
            return lambda names: not inner(names)
        return self.atom()

    def atom(self) -> Matcher:
        token = self.peek()
        if token == "(":
            col = self.tokens[self.i][1]
            self.i += 1
            inner = self.or_()
            if self.peek() != ")":
                raise _error(self.expr, f"the '(' at column {col} is not closed (got {self.where()})")
            self.i += 1
            return inner
        if token is None or token == ")" or token in _KEYWORDS:
            before = f" after {self.tokens[self.i - 1][0]!r}" if self.i > 0 else ""
            raise _error(self.expr, f"expected a word, '(' or 'not'{before}, got {self.where()}")
        self.i += 1
        word = token.lower()
        return lambda names: any(word in name for name in names)


def keyword_matcher(expr: str) -> Matcher:
    """Compile a keyword expression; the matcher takes the lower-cased names of one claim.

    Raises `SpecError` (file ``<command line>``, field ``-k``) for a malformed expression.
    """
    return _Parser(expr).parse()


def select_claims(claims: Iterable[Any], keyword: str | None, tags: Sequence[str] = ()) -> list[Any]:
    """The claims (in their order) that match `keyword` (None or blank: all) and carry any of `tags` (empty: all).

    Expressions are checked before any claim is looked at, so a typo is an error even when there are no claims.
    """
    matcher = keyword_matcher(keyword) if keyword is not None and keyword.strip() else None
    for tag in tags:
        if not tag.strip():
            raise SpecError("a tag cannot be empty", file="<command line>", field_path="--tag")
    wanted = set(tags)
    out = []
    for claim in claims:
        if wanted and not wanted.intersection(claim.tags):
            continue
        if matcher is not None and not matcher([n.lower() for n in claim_names(claim)]):
            continue
        out.append(claim)
    return out
