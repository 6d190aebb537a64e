"""Which group-level terms a formula estimates jointly: the columns of one parenthesised
term on one factor, ``(1 + x | g)``, when there are two or more. Separate terms,
``(1 | g) + (0 + x | g)``, stay independent, as in lme4. The API reads it to check the
requested LKJ priors; the worker to correlate Bambi's terms (``worker.modeling.correlated``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from formulae.expr import Binary, Grouping
from formulae.parser import Parser
from formulae.resolver import Resolver
from formulae.scanner import Scanner


@dataclass(frozen=True)
class Block:
    """Group terms estimated jointly: the columns of one parenthesised term on one factor."""

    factor: str
    terms: tuple[str, ...]  # Bambi's names, e.g. ("1|g", "x|g")
    prefix: str = ""  # Bambi's prefix of a distributional parameter's terms ("sigma_")

    @property
    def name(self) -> str:
        """``1|g:x|g``: the block's name, and with ``_corr`` the key of its LKJ prior."""
        return ":".join(self.terms)

    @property
    def prior_key(self) -> str:
        return f"{self.name}_corr"

    @property
    def chol_name(self) -> str:
        return f"{self.name}_corr_chol"

    def pairs(self) -> list[tuple[int, int, str]]:
        """Every pair of columns ``(i, j)``, i < j, with its correlation's name."""
        k = len(self.terms)
        return [
            (i, j, correlation_name(self.terms[i], self.terms[j]))
            for i in range(k)
            for j in range(i + 1, k)
        ]


def correlation_name(first: str, second: str) -> str:
    """The name of the correlation of two group terms: ``1|g:x|g_corr``."""
    return f"{first}:{second}_corr"


def blocks_of(formula: str, prefix: str = "") -> list[Block]:
    """The blocks of a checked formula: each parenthesised group term's columns on one
    factor, when there are at least two (``(1 + x | g/h)`` gives one on ``g``, one on
    ``g:h``). ``prefix`` is Bambi's for a distributional parameter (``sigma_``)."""
    tree = Parser(Scanner(formula).scan(add_intercept=False)).parse()
    found: list[Block] = []
    for node in _group_terms(tree.right if isinstance(tree, Binary) else tree):
        resolved = Resolver(node).resolve()
        terms = list(getattr(resolved, "terms", [resolved]))
        by_factor: dict[str, list[str]] = {}
        for term in terms:
            name = str(term.name)
            by_factor.setdefault(name.split("|", 1)[1], []).append(prefix + name)
        found += [
            Block(f, tuple(names), prefix) for f, names in by_factor.items() if len(names) >= 2
        ]
    return found


def _group_terms(node: Any) -> list[Any]:
    """The parenthesised ``(expr | factor)`` nodes of a formula's right side."""
    if isinstance(node, Grouping):
        inner = node.expression
        if isinstance(inner, Binary) and inner.operator.kind == "PIPE":
            return [node]
        return _group_terms(inner)
    if isinstance(node, Binary):
        return _group_terms(node.left) + _group_terms(node.right)
    return []
