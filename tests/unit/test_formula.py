"""A client's formula is untrusted text: it is parsed, never executed, and refused unless
every piece of it is in the service's language."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.api.validation.transforms import render
from service.core.errors import InvalidRequest
from service.core.formula import check_formula, check_names, formula_terms, term_names

COLUMNS = {"y", "x", "z", "g", "h", "weird name", "score", "school"}


@pytest.mark.parametrize(
    ("formula", "response", "predictors", "factors"),
    [
        ("score ~ (1 | school)", "score", {"school"}, [["school"]]),
        ("y ~ x + (x | g)", "y", {"x", "g"}, [["g"]]),
        ("y ~ 0 + x", "y", {"x"}, []),
        ("y ~ -1 + x", "y", {"x"}, []),
        ("y ~ x * z + (1 | g/h)", "y", {"x", "z", "g", "h"}, [["g", "h"]]),
        ("y ~ (1 | g) + (1 | g:h)", "y", {"g", "h"}, [["g"], ["g", "h"]]),
        ("y ~ log(x) + scale(z) + C(g) + I(x ** 2) + center(x)", "y", {"x", "z", "g"}, []),
        ("y ~ (x + z) ** 2", "y", {"x", "z"}, []),
        ("y ~ `weird name` + x", "y", {"weird name", "x"}, []),
        ("log(y) ~ x", "y", {"x"}, []),
        ("y ~ I((x - 2) / 3) + exp(-x) + sqrt(abs(z))", "y", {"x", "z"}, []),
    ],
)
def test_accepted_formulas_report_what_they_use(
    formula: str, response: str, predictors: set[str], factors: list[list[str]]
) -> None:
    info = check_formula(formula, COLUMNS)
    assert info.response == response
    assert info.predictors == predictors
    assert info.group_factors == factors


@pytest.mark.parametrize(
    ("formula", "message"),
    [
        ("score ~ (1 | schol)", "'schol' is not a column"),
        ("scor ~ (1 | school)", "'scor' is not a column"),
        ("y ~ x g", "unexpected text after a complete formula: 'g'"),
        ("y ~ x + ", "could not be parsed"),
        ("y ~ x +* z", "could not be parsed"),
        ("y x", "unexpected text after a complete formula: 'x'"),
        ("y", "needs a response and '~'"),
        ("", "empty"),
        ("y ~ x | g", "must be in parentheses"),
        ("y ~ (1 | log(g))", "grouping factor must be a column"),
        ("y ~ 2 + x", "cannot stand as a term"),
    ],
)
def test_refused_formulas_name_the_offending_piece(formula: str, message: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        check_formula(formula, COLUMNS)
    assert caught.value.errors[0].field == "formula"
    assert message in caught.value.errors[0].message


MARKER = Path("/tmp/hbm-service-formula-marker")

HOSTILE = [
    # attribute chains and dunder names that lead to exec through formulae's transforms
    "y ~ C.__globals__",
    "y ~ C.__class__.__init__.__globals__['__builtins__']['exec']('open(\"/tmp/hbm-service-formula-marker\",\"w\")')",  # noqa: E501
    "y ~ I.__globals__['__builtins__'].exec('open(\"/tmp/hbm-service-formula-marker\",\"w\")')",
    "y ~ x + __import__('os').system('touch /tmp/hbm-service-formula-marker')",
    "y ~ __builtins__",
    # dotted module paths reachable from the caller's namespace
    "y ~ os.system('touch /tmp/hbm-service-formula-marker')",
    "y ~ np.exp(x)",
    "y ~ pd.eval('x')",
    "y ~ bmb.Model",
    # calls outside the allow-list, calls on calls, keyword arguments, strings
    'y ~ exec(\'open("/tmp/hbm-service-formula-marker","w")\')',
    "y ~ eval('1')",
    "y ~ open('/tmp/hbm-service-formula-marker', 'w')",
    "y ~ I(x)(x)",
    "y ~ scale(x)(1)",
    "y ~ log(x, base=x)",
    "y ~ C(x, 'open')",
    "y ~ {x.__class__}",
    "exec('1') ~ x",
    "log() ~ x",
    # huge powers, non-numeric constants
    "y ~ I(x ** 100000)",
    "y ~ (x + z) ** 99",
    "y ~ I(x ** x)",
    "y ~ True",
    "y ~ I(x * 1e300)",
    # a power tower of numbers: Python big integers that would run for days
    "y ~ I(x + 1000000**3**3**3**3**3**3**3**3**3**3**3**3**3**3)",
    # products that expand to 2^n terms before anything could refuse them
    "y ~ " + "*".join(["x", "z", "g", "h"] * 4),
    # trailing junk, deep nesting, too many parts, unterminated backquote (loops formulae)
    "y ~ x ; import os",
    "y ~ x g h",
    "y ~ " + "(" * 200 + "x" + ")" * 200,
    "y ~ " + "log(" * 30 + "x" + ")" * 30,
    "y ~ " + " + ".join(["x"] * 400),
    "y ~ `x",
    "y ~ x" + " " * 10_000,
]


@pytest.mark.parametrize("formula", HOSTILE)
def test_hostile_formulas_are_refused_and_nothing_runs(formula: str) -> None:
    MARKER.unlink(missing_ok=True)
    with pytest.raises(InvalidRequest) as caught:
        check_formula(formula, COLUMNS)
    message = caught.value.errors[0].message
    assert caught.value.errors[0].field == "formula"
    assert len(message) < 200, "refusals are short and never echo the whole input"
    assert not MARKER.exists()


@pytest.mark.parametrize(
    ("formula", "widths"),
    [
        ("y ~ (1|g)", [1]),
        ("y ~ (x|g)", [2]),
        ("y ~ (0 + x|g)", [1]),
        ("y ~ (x*z|g) + (1|h)", [4, 1]),
    ],
)
def test_group_terms_report_their_design_width(formula: str, widths: list[int]) -> None:
    assert check_formula(formula, COLUMNS).group_widths == widths


@pytest.mark.parametrize(
    "formula",
    [
        "y ~ I(x**3**3**3**3**3)",  # formulae reads ((((x**3)**3)**3)**3)**3: degree 243
        "y ~ I(x ** 2 ** 2)",
        "y ~ I((x * z) ** 2)",
        "y ~ I(I(x ** 3) ** 3)",
        "y ~ log(x ** 2 * z ** 2)",
        "y ~ I(x * x * x * z)",
        "I(y ** 2 ** 2) ~ x",
    ],
)
def test_arithmetic_inside_a_call_is_at_most_a_cubic(formula: str) -> None:
    cubics = "y ~ I(x ** 3) + I(x ** 2 * z) + I(log(x) ** 3) + I(x / z / h)"
    assert check_formula(cubics, COLUMNS).predictors == {"x", "z", "h"}
    with pytest.raises(InvalidRequest) as caught:
        check_formula(formula, COLUMNS)
    assert "the limit is 3" in caught.value.errors[0].message


@pytest.mark.parametrize(
    "formula", ["y ~ y", "y ~ x + y", "y ~ x + log(y)", "y ~ (1 | y)", "log(y) ~ y"]
)
def test_the_response_is_never_a_predictor(formula: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        check_formula(formula, COLUMNS)
    assert caught.value.errors[0].message == "the response 'y' cannot also be a predictor"


@pytest.mark.parametrize("formula", ["y ~ 0", "y ~ -1", "y ~ 1 + 0", "y ~ 0 + 1 - 1"])
def test_a_formula_without_terms_is_refused_but_an_intercept_alone_has_one(formula: str) -> None:
    assert term_names("y ~ 1") == ["Intercept"]
    with pytest.raises(InvalidRequest) as caught:
        formula_terms(formula)
    assert "has no terms" in caught.value.errors[0].message


def test_the_calls_to_evaluate_and_the_columns_used_as_labels_are_reported() -> None:
    info = check_formula("log(y) ~ x + exp(x) + C(g) + sqrt(abs(z)) + (scale(x) | h)", COLUMNS)
    assert [render(node) for node in info.transforms] == [
        "exp(x)",
        "C(g)",
        "sqrt(abs(z))",
        "scale(x)",
    ]
    assert render(info.response_transform) == "log(y)"
    assert info.categorical == {"g", "h"}


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("Intercept", "its intercept, a parameter or a draws dimension"),
        ("chain", "its intercept, a parameter or a draws dimension"),
        ("draw", "its intercept, a parameter or a draws dimension"),
        *[(p, "a parameter") for p in ("mu", "p", "sigma", "nu", "alpha", "kappa", "threshold")],
        *[
            (f"a{c}b", f"holds '{c}', a character of the formula language")
            for c in "~+*:()[]{}/^,=`|"
        ],
        ("1|g_sigma", "holds '|', a character of the formula language"),
        ("1", "reads as a number"),
        ("2.5", "reads as a number"),
        ("__obs__", "begins or ends with '__'"),
        ("__x", "begins or ends with '__'"),
        ("x__", "begins or ends with '__'"),
        ("s_dim", "the levels of 's'"),
        ("g__factor_dim", "the levels of 'g'"),
        ("threshold_dim", "the levels of 'threshold'"),
        ("sigma_x", "begins with 'sigma_'"),
    ],
)
def test_column_names_that_clash_with_the_models_own_names_are_refused(
    name: str, reason: str
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        check_names({name, "s", "g", "y"}, distributional={"sigma"})
    (error,) = caught.value.errors
    assert error.field == f"data.{name}"
    assert reason in error.message


@pytest.mark.parametrize(
    "name", ["x", "log", "sigma_x", "size_dim", "x_sigma", "x_offset", "y_obs", "2020 sales", "a-b"]
)
def test_names_that_cannot_clash_are_accepted(name: str) -> None:
    check_names({name, "y"}, distributional=())
