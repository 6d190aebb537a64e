"""Formula checking: a client's formula is untrusted text and must never execute code.

formulae (Bambi's formula engine) resolves a call by following a dotted name attribute by
attribute in an environment and calling the result, and its parser stops silently at the
first token it does not expect. So before Bambi sees a formula, the service:

1. caps its length and bracket nesting (formulae's parser recurses) and refuses an
   unterminated backquote (formulae's scanner fails on it with an IndexError);
2. scans and parses it with formulae's own scanner and parser, which evaluate nothing;
3. requires that the parser consumed every token;
4. walks the tree: calls must be undotted names on an allow-list with arithmetic arguments,
   every name must be an exact column of the data, powers are small integers, and the tree
   has a bounded number of nodes.

The API checks every formula before anything is queued; the worker checks it again before
Bambi sees it. Error messages are the service's own and name the offending piece.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from formulae.expr import Assign, Binary, Call, Grouping, Literal, QuotedName, Unary, Variable
from formulae.parser import Parser
from formulae.scanner import Scanner

from service.core.errors import InvalidRequest

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
MAX_LITERAL = 1e6

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
    return FormulaInfo(
        response=response,
        predictors=walker.names,
        group_factors=walker.group_factors,
        group_widths=walker.group_widths,
        trials=walker.trials,
    )


def term_names(formula: str, field_name: str = "formula") -> list[str]:
    """Bambi's names for the terms of a checked formula (``Intercept``, ``x``, ``1|g``...)."""
    from formulae import model_description

    try:
        return [str(term.name) for term in model_description(formula).terms]
    except Exception as exc:  # formulae refuses some shapes our grammar lets through
        raise InvalidRequest.one(
            field_name, "the formula's terms cannot be formed (e.g. '1:x' or '(0 | g)')"
        ) from exc


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
            for arg in node.args:
                self.arithmetic(arg, 1)
            used, self.names = self.names, outer
            if len(used) != 1:
                raise self.refuse(f"the response '{name}(...)' must use exactly one column")
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

    def _factor_columns(self, node: object) -> list[str]:
        self._count()
        if isinstance(node, Variable | QuotedName):
            return [self.column(node)]
        if isinstance(node, Grouping):
            return self._factor_columns(node.expression)
        if isinstance(node, Binary) and node.operator.kind in ("COLON", "SLASH"):
            return self._factor_columns(node.left) + self._factor_columns(node.right)
        raise self.refuse("a grouping factor must be a column, or columns joined by ':' or '/'")

    def call(self, node: Call) -> None:
        """An allow-listed call with arithmetic arguments."""
        name = self.call_name(node, PREDICTOR_CALLS)
        if not node.args:
            raise self.refuse(f"'{name}()' needs an argument")
        if name != "C" and len(node.args) > 1:
            raise self.refuse(f"'{name}(...)' takes one argument")
        for arg in node.args:
            self.arithmetic(arg, 1)

    def arithmetic(self, node: object, depth: int) -> None:
        """Arguments of calls: columns, numbers and + - * / ** between them."""
        self._count()
        if isinstance(node, Variable | QuotedName):
            self.names.add(self.column(node))
        elif isinstance(node, Literal):
            value = node.value
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise self.refuse("only numbers may appear as constants inside a function")
            if abs(value) > MAX_LITERAL:
                raise self.refuse(f"the number {value!r} is too large")
        elif isinstance(node, Grouping):
            self.arithmetic(node.expression, depth + 1)
        elif isinstance(node, Unary):
            if node.operator.kind not in ("PLUS", "MINUS"):
                raise self.refuse(f"the operator '{node.operator.lexeme}' is not allowed")
            self.arithmetic(node.right, depth + 1)
        elif isinstance(node, Binary):
            if node.operator.kind not in _ARITHMETIC:
                raise self.refuse(
                    f"the operator '{node.operator.lexeme}' is not allowed inside a function"
                )
            self.arithmetic(node.left, depth + 1)
            if node.operator.kind == "STAR_STAR":
                if not _mentions_column(node.left):
                    raise self.refuse("a power needs a column in its base, as in 'I(x ** 2)'")
                self.small_power(node.right)
            else:
                self.arithmetic(node.right, depth + 1)
        elif isinstance(node, Call):
            self.call(node)
        elif isinstance(node, Assign):
            raise self.refuse("keyword arguments are not allowed")
        else:
            raise self.refuse("the formula contains an expression that is not allowed")

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
