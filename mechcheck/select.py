"""Claim selection (temporary: replaced by the -k expression parser on the plugin branch)."""

from __future__ import annotations


def select_claims(claims, keyword, tags):
    out = list(claims)
    if keyword:
        out = [c for c in out if keyword.lower() in c.id.lower()]
    if tags:
        out = [c for c in out if set(tags) & set(c.tags)]
    return out
