"""Formula checking: a client's formula is untrusted text and must never execute code.

formulae (Bambi's formula engine) resolves a call by following a dotted name attribute by
attribute in an environment and calling the result, and its parser stops silently at the
first token it does not expect. So before Bambi sees a formula, the service:

1. caps its length and bracket nesting (formulae's parser recurses) and refuses an
   unterminated backquote (formulae's scanner fails on it with an IndexError);
2. scans and parses it with formulae's own scanner and parser, which evaluate nothing;
3. requires that the parser consumed every token;
4. walks the tree: calls must be undotted names on an allow-list with arithmetic arguments,
   every name must be an exact column of the data, powers are small integers, the
   arithmetic inside a call is a polynomial of degree at most ``MAX_DEGREE`` (formulae
   reads ``x**3**3`` as ``(x**3)**3``, so each power being small is not enough), the
   response is not also a predictor, and the tree has a bounded number of nodes.

The API checks every formula before anything is queued; the worker checks it again before
Bambi sees it. Error messages are the service's own and name the offending piece.

Column names. Bambi names a model's PyMC variables, dimensions and coordinates after its
terms, and ArviZ adds its own; a column whose name is one of those names silently merges two
terms or breaks the model later (measured with Bambi 0.21, see
``tests/modeling/test_name_collisions.py``). ``check_names`` refuses, for every column a
model uses (response and distributional formulas included), a name that:

- is reserved: ``Intercept``, ArviZ's ``chain`` and ``draw``, and the parameter names of
  every family (``families.PARAMETER_NAMES``: mu, p, sigma, nu, alpha, kappa, threshold);
  ``Intercept`` merges with the intercept, ``chain``/``draw`` clash with the draws' dimensions,
  a parameter name clashes with that parameter;
- holds a character of the formula language (``~ + * : ( ) [ ] { } / ^ , = ` |``): a
  backquoted ``1|g``, ``x:s`` or ``I(x)`` is the name of the term ``(1|g)``, ``x:s`` or
  ``I(x)`` and merges with it; every name Bambi derives for group terms (``1|g_sigma``,
  ``1|g_offset``...) holds ``|``, so this also rules out the ``_sigma``/``_offset`` clashes;
- reads as a number: a column ``1`` in ``(`1`|g)`` is the term ``1|g``;
- begins or ends with ``__``: Bambi's own names (``__obs__``) and dimensions do;
- ends with a dimension suffix (``_dim``, ``__factor_dim``, ``__expr_dim``) after the name of
  another column the model uses or a parameter: Bambi names the levels of a categorical
  term ``s`` (or an ordinal response ``s``) ``s_dim`` and those of a factor ``g``
  ``g__factor_dim``; ``s_dim`` elsewhere is refused only if no such ``s`` is in the model;
- begins with ``<param>_`` for a parameter that has a distributional formula: the terms of
  ``sigma ~ x`` are named ``sigma_x``, ``sigma_Intercept``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from formulae.expr import Assign, Binary, Call, Grouping, Literal, QuotedName, Unary, Variable
from formulae.parser import Parser
from formulae.scanner import Scanner

from service.core.errors import FieldError, InvalidRequest
from service.core.families import PARAMETER_NAMES

#: Calls a predictor may use. Each is a pure numeric transform or a formulae marker.
PREDICTOR_CALLS = frozenset(
    {
        "log", "log2", "log10", "exp", "sqrt", "abs",
        "scale", "center", "standardize", "C", "I", "offset",
    }
)  # fmt: skip
#: Calls a response may use; ``p(successes, trials)`` is the binomial response.
RESPONSE_CALLS = frozenset({"log", "log2", "log10", "exp", "sqrt", "abs", "I", "p"})

MAX_NESTING = 12
MAX_NODES = 300
MAX_TERMS = 200
MAX_POWER = 3
#: Highest polynomial degree of the arithmetic inside a call: a cubic, as ``poly(x, 3)`` in R.
#: ``I(x**3**3**3**3**3)`` (degree 243 in formulae's left-to-right reading) is refused.
MAX_DEGREE = 3
MAX_LITERAL = 1e6

#: Names of a model's own variables and dimensions (see the module docstring).
RESERVED_NAMES = frozenset({"Intercept", "chain", "draw"}) | PARAMETER_NAMES
SYNTAX_CHARACTERS = frozenset("~+*:()[]{}/^,=`|")
DIMENSION_SUFFIXES = ("__factor_dim", "__expr_dim", "_dim")
#: Calls whose value is not a polynomial of their argument: they count as degree 1.
_NEW_VARIABLE_CALLS = frozenset({"log", "log2", "log10", "exp"})
_NUMBER = re.compile(r"[0-9]+\.?[0-9]*|\.[0-9]+")  # formulae's numbers (no exponent)

_Refuse = Callable[[str], InvalidRequest]

_ARITHMETIC = {"PLUS", "MINUS", "STAR", "SLASH", "STAR_STAR"}
_MODEL_OPERATORS = {"PLUS", "MINUS", "STAR", "SLASH", "COLON", "STAR_STAR", "PIPE"}


@dataclass
class FormulaInfo:
    """What a checked formula refers to."""

    response: str
    predictors: set[str] = field(default_factory=set)
    group_factors: list[list[str]] = field(default_factory=list)
    #: for each group term, how many design columns its expression expands to
    group_widths: list[int] = field(default_factory=list)
    trials: str | int | None = None  # binomial ``p(successes, trials)``: a column or a number
    #: the allow-listed calls of the right side, as formulae nodes (their values are checked
    #: in ``service.api.validation.transforms``)
    transforms: list[Any] = field(default_factory=list)
    #: the response's call (``log(y)``), if it has one other than ``p(...)``
    response_transform: Any | None = None
    #: columns the formula codes as categories: grouping factors and arguments of ``C(...)``
    categorical: set[str] = field(default_factory=set)

    @property
    def variables(self) -> set[str]:
        """Every data column the formula uses, response included."""
        trials = {self.trials} if isinstance(self.trials, str) else set()
        return {self.response, *self.predictors, *trials}


def check_formula(
    formula: str,
    columns: Collection[str],
    *,
    max_length: int = 500,
    field_name: str = "formula",
    parameter: str | None = None,
) -> FormulaInfo:
    """Check ``formula`` against the data's ``columns``; raise InvalidRequest if refused.

    With ``parameter``, the formula is a distributional one (``sigma ~ x``): its left side
    must be that parameter's name instead of a column.
    """

    def refuse(message: str) -> InvalidRequest:
        return InvalidRequest.one(field_name, message)

    if not formula.strip():
        raise refuse("the formula is empty")
    if len(formula) > max_length:
        raise refuse(f"the formula is {len(formula)} characters long; the limit is {max_length}")
    _check_brackets(formula, refuse)
    try:
        tokens = Scanner(formula).scan(add_intercept=False)
    except Exception as exc:  # the scanner's own messages are plain; keep only ours
        raise refuse("the formula contains a character that is not allowed") from exc
    parser = Parser(tokens)
    try:
        tree = parser.parse()
    except Exception as exc:
        raise refuse("the formula could not be parsed") from exc
    if not parser.at_end():
        if parser.peek().kind == "PIPE":
            raise refuse("a group term must be in parentheses, as in '(1 | g)'")
        rest = " ".join(token.lexeme for token in tokens[parser.current : -1])
        raise refuse(f"unexpected text after a complete formula: '{_clip(rest)}'")
    if not (isinstance(tree, Binary) and tree.operator.kind == "TILDE"):
        raise refuse("a formula needs a response and '~', as in 'y ~ x + (1 | g)'")
    walker = _Walker(set(columns), refuse)
    if parameter is None:
        response = walker.response(tree.left)
    elif isinstance(tree.left, Variable) and tree.left.name.lexeme == parameter:
        response = parameter
    else:
        raise refuse(f"the left side must be '{parameter}'")
    if walker.model_terms(tree.right, depth=0) > MAX_TERMS:
        raise refuse(f"the formula expands to more than {MAX_TERMS} terms")
    if parameter is None and response in walker.names:
        raise refuse(f"the response '{_clip(response)}' cannot also be a predictor")
    return FormulaInfo(
        response=response,
        predictors=walker.names,
        group_factors=walker.group_factors,
        group_widths=walker.group_widths,
        trials=walker.trials,
        transforms=walker.transforms,
        response_transform=walker.response_transform,
        categorical=walker.categorical,
    )


def formula_terms(formula: str, field_name: str = "formula") -> list[Any]:
    """formulae's terms of a checked formula; a formula without any term is refused."""
    from formulae import model_description

    try:
        terms = list(model_description(formula).terms)
    except Exception as exc:  # formulae refuses some shapes our grammar lets through
        raise InvalidRequest.one(
            field_name, "the formula's terms cannot be formed (e.g. '1:x' or '(0 | g)')"
        ) from exc
    if not terms:
        raise InvalidRequest.one(
            field_name, "the formula has no terms; write '~ 1' for an intercept alone"
        )
    return terms


def term_names(formula: str, field_name: str = "formula") -> list[str]:
    """Bambi's names for the terms of a checked formula (``Intercept``, ``x``, ``1|g``...)."""
    return [str(term.name) for term in formula_terms(formula, field_name)]


def check_names(names: Collection[str], *, distributional: Collection[str] = ()) -> None:
    """Refuse column names that clash with the model's own names (see the module docstring).

    ``names`` are the columns the model uses; ``distributional`` the parameters that have a
    formula of their own. Each refused name is a ``data.<column>`` error.
    """
    errors = []
    for name in sorted(names):
        clash = _name_clash(name, names, distributional)
        if clash is not None:
            errors.append(
                FieldError(
                    f"data.{_clip(name, 60)}",
                    f"the column name '{_clip(name)}' {clash}; rename the column",
                )
            )
    if errors:
        raise InvalidRequest(errors)


def _name_clash(name: str, names: Collection[str], distributional: Collection[str]) -> str | None:
    if name in RESERVED_NAMES:
        return "is a name the model gives to its intercept, a parameter or a draws dimension"
    syntax = sorted(set(name) & SYNTAX_CHARACTERS)
    if syntax:
        return f"holds '{syntax[0]}', a character of the formula language"
    if _NUMBER.fullmatch(name):
        return "reads as a number"
    if name.startswith("__") or name.endswith("__"):
        return "begins or ends with '__', as the model's internal names do"
    for suffix in DIMENSION_SUFFIXES:
        stem = name.removesuffix(suffix)
        if stem != name and (stem in names or stem in RESERVED_NAMES):
            return f"is the name the model gives to the levels of '{_clip(stem)}'"
    for parameter in sorted(distributional):
        if name.startswith(f"{parameter}_"):
            return f"begins with '{parameter}_', as the terms of the {parameter} formula do"
    return None


def _check_brackets(formula: str, refuse: _Refuse) -> None:
    if formula.count("`") % 2:
        raise refuse("a backquoted name is not closed")
    depth = 0
    quote = ""
    for char in formula:
        if quote:
            quote = "" if char == quote else quote
        elif char in "`'\"":
            quote = char
        elif char in "([{":
            depth += 1
            if depth > MAX_NESTING:
                raise refuse(f"brackets are nested more than {MAX_NESTING} deep")
        elif char in ")]}":
            depth -= 1
            if depth < 0:
                raise refuse("a closing bracket has no opening bracket")
    if depth:
        raise refuse("a bracket is not closed")


def _clip(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _Walker:
    """Walks formulae's syntax tree and refuses anything outside the service's language."""

    def __init__(self, columns: set[str], refuse: _Refuse) -> None:
        self.columns = columns
        self.refuse = refuse
        self.names: set[str] = set()
        self.group_factors: list[list[str]] = []
        self.group_widths: list[int] = []
        self.trials: str | int | None = None
        self.transforms: list[Any] = []
        self.response_transform: Any | None = None
        self.categorical: set[str] = set()
        self.nodes = 0

    def _count(self) -> None:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise self.refuse(f"the formula has more than {MAX_NODES} parts")

    def column(self, node: Variable | QuotedName) -> str:
        """The data column a name refers to; it must exist exactly."""
        if isinstance(node, QuotedName):
            name = str(node.expression.lexeme)[1:-1]
        else:
            name = str(node.name.lexeme)
            if "." in name:
                raise self.refuse(
                    f"'{_clip(name)}' is not allowed: dotted names are refused "
                    "(write a column whose name has dots in backquotes)"
                )
            if name.startswith("__"):
                raise self.refuse(f"'{_clip(name)}' is not allowed")
            if node.level is not None and not isinstance(node.level.value, str):
                raise self.refuse(f"'{_clip(name)}[...]' must select a level by its name")
        if name not in self.columns:
            raise self.refuse(f"'{_clip(name)}' is not a column of the data")
        return name

    def response(self, node: object) -> str:
        """The response side: a column, or an allow-listed transform of one column."""
        self._count()
        if isinstance(node, Variable | QuotedName):
            return self.column(node)
        if isinstance(node, Call):
            name = self.call_name(node, RESPONSE_CALLS)
            if name == "p":
                return self.binomial_response(node)
            outer, self.names = self.names, set()
            self.arguments(name, node)
            used, self.names = self.names, outer
            if len(used) != 1:
                raise self.refuse(f"the response '{name}(...)' must use exactly one column")
            self.response_transform = node
            return used.pop()
        raise self.refuse("the response must be a column name, like 'score ~ ...'")

    def binomial_response(self, node: Call) -> str:
        """``p(successes, trials)``: a column, then a column or a whole number."""
        if len(node.args) != 2 or not isinstance(node.args[0], Variable | QuotedName):
            raise self.refuse("a binomial response is written 'p(successes, trials)'")
        successes = self.column(node.args[0])
        trials = node.args[1]
        if isinstance(trials, Variable | QuotedName):
            self.trials = self.column(trials)
        elif _is_literal(trials, range(1, 10**9)):
            assert isinstance(trials, Literal)
            self.trials = int(trials.value)
        else:
            raise self.refuse("binomial trials must be a column or a whole number above 0")
        return successes

    def call_name(self, node: Call, allowed: frozenset[str]) -> str:
        """The callee of an allow-listed call; anything else is refused."""
        callee = node.callee
        if not isinstance(callee, Variable) or callee.level is not None:
            raise self.refuse("only a plain function name may be called")
        name = str(callee.name.lexeme)
        if name not in allowed:
            raise self.refuse(
                f"'{_clip(name)}' is not an allowed function; allowed: {', '.join(sorted(allowed))}"
            )
        return name

    def model_terms(self, node: object, depth: int) -> int:
        """The right-hand side: terms joined by model operators, and group terms.

        Returns an upper bound on the number of terms the part expands to, so that products
        such as ``a*b*c*...`` (2^n terms) are refused before formulae expands them.
        """
        self._count()
        if isinstance(node, Literal):
            if node.value not in (0, 1) or isinstance(node.value, bool):
                raise self.refuse(f"the number {node.value!r} cannot stand as a term")
            return int(node.value)
        if isinstance(node, Variable | QuotedName):
            self.names.add(self.column(node))
            return 1
        if isinstance(node, Grouping):
            inner = node.expression
            if isinstance(inner, Binary) and inner.operator.kind == "PIPE":
                self.group_term(inner)
                return 1
            return self.model_terms(inner, depth + 1)
        if isinstance(node, Unary):
            if node.operator.kind != "MINUS" or not _is_literal(node.right, (0, 1)):
                raise self.refuse("only '-1' and '-0' may be negated outside a function")
            return 0
        if isinstance(node, Binary):
            kind = node.operator.kind
            if kind == "PIPE":
                raise self.refuse("a group term must be in parentheses, as in '(1 | g)'")
            if kind not in _MODEL_OPERATORS:
                raise self.refuse(f"the operator '{node.operator.lexeme}' is not allowed")
            left = self.model_terms(node.left, depth + 1)
            if kind == "STAR_STAR":
                self.small_power(node.right)
                assert isinstance(node.right, Literal)
                terms = left ** int(node.right.value)
            else:
                right = self.model_terms(node.right, depth + 1)
                terms = {
                    "PLUS": left + right,
                    "MINUS": left,
                    "STAR": left + right + left * right,
                    "COLON": left * right,
                    "SLASH": left + left * right,
                }[kind]
            if terms > MAX_TERMS:
                raise self.refuse(f"the formula expands to more than {MAX_TERMS} terms")
            return int(terms)
        if isinstance(node, Call):
            self.call(node)
            self.transforms.append(node)
            return 1
        raise self.refuse("the formula contains an expression that is not allowed")

    def group_term(self, node: Binary) -> None:
        """``(expr | factor)``: the factor is one or more columns joined by ':' or '/'."""
        width = self.model_terms(node.left, 1)
        if not _states_intercept(node.left):
            width += 1  # formulae adds an intercept unless the expression says 0 or 1
        factor = self._factor_columns(node.right)
        self.group_factors.append(factor)
        self.group_widths.append(width)
        self.names.update(factor)
        self.categorical.update(factor)

    def _factor_columns(self, node: object) -> list[str]:
        self._count()
        if isinstance(node, Variable | QuotedName):
            return [self.column(node)]
        if isinstance(node, Grouping):
            return self._factor_columns(node.expression)
        if isinstance(node, Binary) and node.operator.kind in ("COLON", "SLASH"):
            return self._factor_columns(node.left) + self._factor_columns(node.right)
        raise self.refuse("a grouping factor must be a column, or columns joined by ':' or '/'")

    def call(self, node: Call) -> int:
        """An allow-listed call with arithmetic arguments; returns its polynomial degree."""
        name = self.call_name(node, PREDICTOR_CALLS)
        if not node.args:
            raise self.refuse(f"'{name}()' needs an argument")
        if name != "C" and len(node.args) > 1:
            raise self.refuse(f"'{name}(...)' takes one argument")
        outer, self.names = self.names, set()
        degree = self.arguments(name, node)
        used, self.names = self.names, outer | self.names
        if name == "C":
            self.categorical |= used
        return degree

    def arguments(self, name: str, node: Call) -> int:
        """The arguments of a call; the call's degree (log and exp start a new variable)."""
        degree = max((self.arithmetic(arg, 1) for arg in node.args), default=0)
        return min(degree, 1) if name in _NEW_VARIABLE_CALLS else degree

    def arithmetic(self, node: object, depth: int) -> int:
        """Arguments of calls: columns, numbers and + - * / ** between them.

        Returns the expression's polynomial degree (a column 1, a number 0; a quotient counts
        as the product it bounds) and refuses one above MAX_DEGREE.
        """
        self._count()
        if isinstance(node, Variable | QuotedName):
            self.names.add(self.column(node))
            return 1
        if isinstance(node, Literal):
            value = node.value
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise self.refuse("only numbers may appear as constants inside a function")
            if abs(value) > MAX_LITERAL:
                raise self.refuse(f"the number {value!r} is too large")
            return 0
        if isinstance(node, Grouping):
            return self.arithmetic(node.expression, depth + 1)
        if isinstance(node, Unary):
            if node.operator.kind not in ("PLUS", "MINUS"):
                raise self.refuse(f"the operator '{node.operator.lexeme}' is not allowed")
            return self.arithmetic(node.right, depth + 1)
        if isinstance(node, Binary):
            return self.binary(node, depth)
        if isinstance(node, Call):
            return self.call(node)
        if isinstance(node, Assign):
            raise self.refuse("keyword arguments are not allowed")
        raise self.refuse("the formula contains an expression that is not allowed")

    def binary(self, node: Binary, depth: int) -> int:
        """``a op b`` inside a call, with the degree of the result."""
        kind = node.operator.kind
        if kind not in _ARITHMETIC:
            raise self.refuse(
                f"the operator '{node.operator.lexeme}' is not allowed inside a function"
            )
        left = self.arithmetic(node.left, depth + 1)
        if kind == "STAR_STAR":
            if not _mentions_column(node.left):
                raise self.refuse("a power needs a column in its base, as in 'I(x ** 2)'")
            self.small_power(node.right)
            assert isinstance(node.right, Literal)
            degree = left * int(node.right.value)
        else:
            right = self.arithmetic(node.right, depth + 1)
            degree = max(left, right) if kind in ("PLUS", "MINUS") else left + right
        if degree > MAX_DEGREE:
            raise self.refuse(
                f"a product or power of degree {degree} inside a function is refused; "
                f"the limit is {MAX_DEGREE}"
            )
        return degree

    def small_power(self, node: object) -> None:
        """The right side of ``**``: a whole number from 1 to MAX_POWER."""
        self._count()
        if not _is_literal(node, range(1, MAX_POWER + 1)):
            raise self.refuse(f"a power must be a whole number from 1 to {MAX_POWER}")


def _states_intercept(node: object) -> bool:
    """Whether a sum of terms includes an explicit 0 or 1."""
    if isinstance(node, Literal):
        return True
    if isinstance(node, Grouping):
        return _states_intercept(node.expression)
    if isinstance(node, Unary):
        return True
    if isinstance(node, Binary) and node.operator.kind in ("PLUS", "MINUS"):
        return _states_intercept(node.left) or _states_intercept(node.right)
    return False


def _mentions_column(node: object) -> bool:
    """Whether an arithmetic expression refers to any name at all."""
    if isinstance(node, Variable | QuotedName):
        return True
    children = [getattr(node, name, None) for name in ("left", "right", "expression")]
    children += list(getattr(node, "args", []) or [])
    return any(_mentions_column(child) for child in children if child is not None)


def _is_literal(node: object, allowed: Collection[int]) -> bool:
    return (
        isinstance(node, Literal)
        and isinstance(node.value, int)
        and not isinstance(node.value, bool)
        and node.value in allowed
    )
