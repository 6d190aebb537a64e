"""What a fit or prediction request must be before anything is queued or sent to a worker:
labels of their training type, no categorical response outside the ordinal family, column
names that cannot clash with the model's own, transforms with finite values, bounded
categoricals and designs, a response that is no predictor, valid Unicode, strict JSON types
and a bounded number of predicted values. Each test calls the validation functions directly."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from service.api.validation import validate_fit_request, validate_prediction_data
from service.core.errors import FieldError, InvalidRequest
from service.core.schemas import FitRequest, FitSpec, PredictionRequest
from service.core.settings import Settings

SETTINGS = Settings(max_levels_per_categorical=5, max_prediction_cells=20_000)

DATA: dict[str, list[Any]] = {
    "y": [1.0, 2.5, 3.0, 4.5, 2.0, 3.5],
    "x": [0.5, 1.0, 1.5, 2.0, 2.5, 3.0],
    "k": [1, 2, 3, 4, 5, 6],  # whole numbers used as a number
    "g": [1, 2, 3, 1, 2, 3],  # whole-number labels
    "gb": [True, False, True, False, True, False],
    "s": ["a", "b", "c", "a", "b", "c"],
}


def fit_request(**overrides: Any) -> FitRequest:
    fields: dict[str, Any] = {"data": DATA, "formula": "y ~ x"} | overrides
    return FitRequest.model_validate(fields)


def fit(settings: Settings = SETTINGS, **overrides: Any) -> FitSpec:
    spec, _ = validate_fit_request(fit_request(**overrides), settings)
    return spec


def refusal(settings: Settings = SETTINGS, **overrides: Any) -> FieldError:
    with pytest.raises(InvalidRequest) as caught:
        fit(settings, **overrides)
    return caught.value.errors[0]


def prediction_refusal(data: dict[str, list[Any]], spec: FitSpec) -> list[FieldError]:
    with pytest.raises(InvalidRequest) as caught:
        validate_prediction_data(data, spec, SETTINGS)
    return caught.value.errors


def sendable(error: FieldError) -> bool:
    """Whether the error can be sent as a UTF-8 JSON answer."""
    try:
        json.dumps({"field": error.field, "message": error.message}, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return False
    return True


# ------------------------------------------------- 1. prediction columns keep their type

GROUPED = "y ~ x + (1 | g) + (1 | gb) + (1 | s)"


@pytest.mark.parametrize(
    ("column", "values", "expected"),
    [
        ("gb", [1, 0], "true/false values"),
        ("gb", [0, 0], "true/false values"),
        ("gb", [1.0, 0.0], "true/false values"),
        ("gb", ["true", "false"], "true/false values"),
        ("g", ["1", "3"], "whole numbers"),
        ("g", [1.0, 3.0], "whole numbers"),
        ("g", [True, False], "whole numbers"),
        ("s", [1, 2], "text"),
        ("s", [1.0, 2.0], "text"),
        ("x", [True, False], "numbers"),
        ("x", ["1.5", "2"], "numbers"),
    ],
)
def test_prediction_labels_and_numbers_must_have_their_training_type(
    column: str, values: list[Any], expected: str
) -> None:
    spec = fit(formula=GROUPED)
    rows = {"x": [1, 2.5], "g": [1, 99], "gb": [True, False], "s": ["a", "never seen"]}
    assert validate_prediction_data(rows, spec, SETTINGS) == rows
    (error,) = prediction_refusal(rows | {column: values}, spec)
    assert error.field == f"data.{column}"
    assert expected in error.message and "rows 0, 1" in error.message


def test_whole_numbers_used_as_a_number_take_any_number_but_as_a_label_only_whole_ones() -> None:
    as_number = fit(formula="y ~ k")
    assert validate_prediction_data({"k": [2.5, 3]}, as_number, SETTINGS) == {"k": [2.5, 3]}
    six_levels = Settings(max_prediction_cells=20_000)
    for formula in ("y ~ C(k)", "y ~ (1 | k)"):
        (error,) = prediction_refusal({"k": [2.5, 3]}, fit(six_levels, formula=formula))
        assert error.field == "data.k" and "row 0 holds" in error.message
    declared = fit(six_levels, formula="y ~ k", categorical={"k": None})
    (error,) = prediction_refusal({"k": [3, 2.0]}, declared)
    assert error.field == "data.k" and "row 1 holds" in error.message


# --------------------------------------------------- 2. categorical names the response


@pytest.mark.parametrize(
    ("family", "data"),
    [
        ("bernoulli", {"y": [0, 1, 1, 0], "x": [1.0, 2.0, 3.0, 4.0]}),
        ("gaussian", {"y": [0.5, 1.0, 1.5, 2.0], "x": [1.0, 2.0, 3.0, 4.0]}),
        ("poisson", {"y": [0, 1, 2, 3], "x": [1.0, 2.0, 3.0, 4.0]}),
    ],
)
def test_only_the_cumulative_family_takes_a_categorical_response(
    family: str, data: dict[str, list[Any]]
) -> None:
    ordinal = {"y": ["lo", "mid", "hi", "mid"], "x": [1.0, 2.0, 3.0, 4.0]}
    spec = fit(family="cumulative", data=ordinal, categorical={"y": ["lo", "mid", "hi"]})
    assert spec.categorical == {"y": ["lo", "mid", "hi"]}
    error = refusal(family=family, data=data, categorical={"y": None})
    assert error.field == "categorical.y"
    assert "cannot be categorical" in error.message


# ------------------------------------------------------- 3. names that clash with Bambi's


@pytest.mark.parametrize(
    ("name", "formula", "extra"),
    [
        ("Intercept", "y ~ x + Intercept", {}),
        ("chain", "y ~ x + chain", {}),
        ("draw", "y ~ x + draw", {}),
        ("sigma", "y ~ x + sigma", {}),
        ("mu", "y ~ mu", {}),
        ("kappa", "y ~ kappa", {}),
        ("__obs__", "y ~ x + `__obs__`", {}),
        ("1|g", "y ~ `1|g` + (1 | g)", {}),
        ("1|g_sigma", "y ~ `1|g_sigma` + (1 | g)", {}),
        ("1|g_offset", "y ~ `1|g_offset` + (1 | g)", {}),
        ("I(x)", "y ~ I(x) + `I(x)`", {}),
        ("1", "y ~ (1 | g) + (`1` | g)", {}),
        ("s_dim", "y ~ s + s_dim", {}),
        ("g__factor_dim", "y ~ g__factor_dim + (1 | g)", {}),
        ("sigma_x", "y ~ sigma_x", {"distributional": {"sigma": "x"}}),
    ],
)
def test_column_names_that_clash_with_the_models_own_names_are_refused(
    name: str, formula: str, extra: dict[str, Any]
) -> None:
    error = refusal(data=DATA | {name: DATA["x"]}, formula=formula, **extra)
    assert error.field == f"data.{name}"
    assert "rename the column" in error.message


def test_a_response_named_like_a_parameter_is_refused_but_look_alikes_are_not() -> None:
    error = refusal(data={"mu": DATA["y"], "x": DATA["x"]}, formula="mu ~ x")
    assert error.field == "data.mu"
    data = DATA | {"log": DATA["x"], "size_dim": DATA["x"], "sigma_x": DATA["x"]}
    spec = fit(data=data, formula="y ~ log + size_dim + sigma_x + log(x)")
    assert set(spec.columns) == {"y", "x", "log", "size_dim", "sigma_x"}


# ----------------------------------------------------------- 4. transforms out of domain


@pytest.mark.parametrize(
    ("formula", "column", "values", "piece"),
    [
        ("y ~ log(x)", "x", [0.5, 0.0, -1.0], "'log(x)' is not a finite number in rows 1, 2"),
        ("log(y) ~ x", "y", [1.0, -2.0, 3.0], "'log(y)' is not a finite number in row 1"),
        ("y ~ sqrt(x)", "x", [1.0, -1.0, 4.0], "sqrt needs values of 0 or more"),
        ("y ~ exp(x)", "x", [1.0, 1e300, 2.0], "'exp(x)' is not a finite number in row 1"),
        ("y ~ I(1 / x)", "x", [1.0, 0.0, 2.0], "'I(1 / x)' is not a finite number in row 1"),
        ("y ~ scale(x)", "x", [2.0, 2.0, 2.0], "scale needs values that vary"),
        ("y ~ standardize(x)", "x", [2.0, 2.0, 2.0], "standardize needs values that vary"),
        ("y ~ log10(x - 2)", "x", [3.0, 2.0, 4.0], "'log10(x - 2)' is not a finite number"),
        ("y ~ exp(-exp(x))", "x", [1.0, 800.0, 2.0], "'exp(x)' is not a finite number in row 1"),
    ],
)
def test_transforms_with_values_out_of_their_domain_are_refused_naming_the_rows(
    formula: str, column: str, values: list[float], piece: str
) -> None:
    data = {"y": [1.0, 2.0, 3.0], column: values} | ({"x": [1.0] * 3} if column == "y" else {})
    error = refusal(data=data, formula=formula)
    assert error.field == "formula"
    assert piece in error.message


def test_a_power_of_whole_numbers_past_int64_is_refused_but_of_decimals_is_not() -> None:
    decimals = {"y": [1.0, 2.0, 3.0], "k": [2.0, 3_000_000.0, 4.0]}
    assert fit(data=decimals, formula="y ~ I(k ** 3)").columns["k"] == decimals["k"]
    whole = decimals | {"k": [2, 3_000_000, 4]}  # pandas computes int64 and wraps around
    error = refusal(data=whole, formula="y ~ I(k ** 3)")
    assert "'I(k ** 3)' is not a finite number in row 1" in error.message
    assert "past the range of whole numbers" in error.message


def test_rows_are_numbered_as_sent_when_incomplete_rows_are_dropped() -> None:
    data = {"y": [1.0, None, 2.0, 3.0], "x": [1.0, 1.0, 0.0, 2.0]}
    error = refusal(data=data, formula="y ~ log(x)", na_action="drop")
    assert "in row 2 " in error.message


def test_distributional_transforms_are_checked_on_their_own_field() -> None:
    data = {"y": [1.0, 2.0, 3.0], "x": [1.0, 0.0, 2.0]}
    error = refusal(data=data, formula="y ~ 1", distributional={"sigma": "log(x)"})
    assert error.field == "distributional.sigma"


def test_a_transform_of_text_or_booleans_is_refused() -> None:
    assert "'s' holds text" in refusal(formula="y ~ log(s)").message
    assert "'gb' holds true/false" in refusal(formula="y ~ I(gb * x)").message


def test_new_rows_out_of_a_transforms_domain_are_refused_naming_the_rows() -> None:
    spec = fit(formula="y ~ log(x) + exp(x)")
    (error,) = prediction_refusal({"x": [1.0, 0.0, -3.0]}, spec)
    assert error.field == "data" and "'log(x)' is not a finite number in rows 1, 2" in error.message
    (error,) = prediction_refusal({"x": [1.0, 1e300]}, spec)
    assert "'exp(x)' is not a finite number in row 1" in error.message


def test_new_rows_are_scaled_with_the_training_mean_and_sd() -> None:
    spec = fit(formula="y ~ log(scale(x) + 1.5)")  # training x: mean 1.75, sd 0.85
    assert validate_prediction_data({"x": [3.0]}, spec, SETTINGS) == {"x": [3.0]}
    (error,) = prediction_refusal({"x": [1.0, 0.3]}, spec)
    assert "in row 1 " in error.message  # (0.3 - 1.75) / 0.85 + 1.5 < 0


# ----------------------------------------------------- 5. categoricals and design size


@pytest.mark.parametrize(
    ("formula", "extra", "name"),
    [
        ("y ~ s", {}, "s"),
        ("y ~ C(k)", {}, "k"),
        ("y ~ k", {"categorical": {"k": None}}, "k"),
        ("y ~ x + (s | g)", {}, "s"),
    ],
)
def test_categoricals_with_too_many_levels_are_refused(
    formula: str, extra: dict[str, Any], name: str
) -> None:
    data = DATA | {"s": list("abcdef")}
    assert fit(data=data, formula="y ~ (1 | s) + (1 | k)").columns["s"] == data["s"]
    error = refusal(data=data, formula=formula, **extra)
    assert error.field == "formula"
    assert f"'{name}' has 6 levels" in error.message and "(1 | ...)" in error.message


def test_the_common_design_counts_an_interaction_of_categoricals_as_the_product() -> None:
    n = 100
    data = {
        "y": [float(i) for i in range(n)],
        "a": [f"a{i % 10}" for i in range(n)],
        "b": [f"b{i // 10}" for i in range(n)],
    }
    settings = Settings(max_levels_per_categorical=10, max_design_bytes=64 * 1024)
    error = refusal(settings, data=data, formula="y ~ a * b")
    assert error.message.startswith("the design would take about 0.1 MiB")
    assert "(100 rows x 121 common and 0 group-level columns)" in error.message
    assert fit(settings, data=data, formula="y ~ a + b")


def test_the_group_design_counts_the_levels_of_a_categorical_expression() -> None:
    data = DATA | {"g": list(range(6))}
    settings = Settings(max_design_bytes=300)  # 6 rows x (1 + 6 x (1 + 3)) x 8 > 300
    error = refusal(settings, data=data, formula="y ~ 1 + (s | g)")
    assert "(6 rows x 24 columns)" in error.message


# ----------------------------------------------------- 6. response as predictor, no terms


@pytest.mark.parametrize(
    ("formula", "distributional"),
    [
        ("y ~ y", {}),
        ("y ~ x + y", {}),
        ("y ~ log(y)", {}),
        ("y ~ (1 | y)", {}),
        ("y ~ x", {"sigma": "y"}),
    ],
)
def test_the_response_cannot_be_a_predictor(formula: str, distributional: dict[str, str]) -> None:
    error = refusal(formula=formula, distributional=distributional)
    assert "the response 'y' cannot also be a predictor" in error.message
    assert error.field == ("distributional.sigma" if distributional else "formula")


@pytest.mark.parametrize("formula", ["y ~ 0", "y ~ -1", "y ~ 1 + 0", "y ~ 1 - 1"])
def test_a_model_without_terms_is_refused_but_an_intercept_alone_is_one(formula: str) -> None:
    assert fit(formula="y ~ 1").columns == {"y": DATA["y"]}
    error = refusal(formula=formula)
    assert error == FieldError(
        "formula", "the formula has no terms; write '~ 1' for an intercept alone"
    )


# ------------------------------------------------------------------ 7. lone surrogates

BAD = "\ud800"


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"data": DATA | {"s": ["a", BAD, "c", "a", "b", "c"]}, "formula": "y ~ s"}, "data.s"),
        ({"data": DATA | {f"x{BAD}": DATA["x"]}}, "data"),
        ({"data": [{"y": 1.0, "x": 2.0}, {"y": 2.0, f"x{BAD}": 1.0}]}, "data"),
        ({"formula": f"y ~ x{BAD}"}, "formula"),
        ({"formula": f"y ~ `x{BAD}`"}, "formula"),
        ({"priors": {f"x{BAD}": {"dist": "Normal", "params": {"mu": 0, "sigma": 1}}}}, "priors"),
        ({"priors": {"x": {"dist": f"Normal{BAD}"}}}, "priors.x.dist"),
        ({"categorical": {"s": ["a", BAD]}, "formula": "y ~ s"}, "categorical.s"),
        ({"categorical": {BAD: None}}, "categorical"),
        ({"distributional": {"sigma": f"x{BAD}"}}, "distributional.sigma"),
        ({"family": f"gaussian{BAD}"}, "family"),
    ],
)
def test_text_with_a_lone_surrogate_is_refused_naming_the_field(
    overrides: dict[str, Any], field: str
) -> None:
    error = refusal(**overrides)
    assert error.field == field
    assert "not valid Unicode" in error.message and sendable(error)


def test_prediction_rows_with_a_lone_surrogate_are_refused() -> None:
    spec = fit(formula="y ~ (1 | s)")
    (error,) = prediction_refusal({"s": ["a", f"b{BAD}"]}, spec)
    assert error.field == "data.s" and sendable(error)
    (error,) = prediction_refusal({"s": ["a", "b"], BAD: [1, 2]}, spec)
    assert error.field == "data" and sendable(error)


# ------------------------------------------------------------------- 8. strict JSON types


@pytest.mark.parametrize(
    ("sampler", "field"),
    [
        ({"draws": True}, "draws"),
        ({"draws": "10"}, "draws"),
        ({"draws": 10.0}, "draws"),
        ({"chains": True}, "chains"),
        ({"seed": "3"}, "seed"),
        ({"tune": True}, "tune"),
        ({"time_limit_s": 60.0}, "time_limit_s"),
        ({"target_accept": "0.9"}, "target_accept"),
    ],
)
def test_sampler_numbers_take_json_numbers_only(sampler: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        fit_request(sampler=sampler)
    assert caught.value.errors()[0]["loc"] == ("sampler", field)


def test_numbers_take_integers_never_booleans_and_data_keeps_its_json_types() -> None:
    with pytest.raises(ValidationError) as caught:
        fit_request(priors={"x": {"dist": "Normal", "params": {"mu": True, "sigma": 1}}})
    assert caught.value.errors()[0]["loc"][:3] == ("priors", "x", "params")
    request = fit_request(
        data={"y": [1, 2.5, True, "a", None]},
        sampler={"target_accept": 0.9, "draws": 10},
        priors={"x": {"dist": "Normal", "params": {"mu": 0, "sigma": 1}}},
    )
    assert request.sampler.draws == 10
    assert request.priors["x"].params == {"mu": 0.0, "sigma": 1.0}
    assert request.data == {"y": [1, 2.5, True, "a", None]}
    assert [type(v) for v in request.data["y"]] == [int, float, bool, str, type(None)]


@pytest.mark.parametrize(
    ("fields", "loc"),
    [({"seed": "3"}, "seed"), ({"seed": True}, "seed"), ({"prob": "0.5"}, "prob")],
)
def test_prediction_requests_are_strict_too(fields: dict[str, Any], loc: str) -> None:
    with pytest.raises(ValidationError) as caught:
        PredictionRequest.model_validate({"data": {"x": [1.0]}} | fields)
    assert caught.value.errors()[0]["loc"] == (loc,)


# ------------------------------------------------------------ 9. predicted values bounded


def test_predictions_are_bounded_by_rows_times_posterior_draws() -> None:
    spec = fit()  # 4 chains x 1000 draws by default; the limit is 20,000 values
    five = {"x": [1.0, 2.0, 3.0, 4.0, 5.0]}
    assert validate_prediction_data(five, spec, SETTINGS) == five
    (error,) = prediction_refusal({"x": [*five["x"], 6.0]}, spec)
    assert error == FieldError(
        "data",
        "6 rows x 4000 posterior draws (4 chains x 1000) would be 24,000 predicted values; "
        "the limit is 20,000: send at most 5 rows per request",
    )


def test_the_target_acceptance_rate_defaults_per_family_as_rstanarm_samples() -> None:
    """rstanarm samples every model at adapt_delta 0.95; gaussian models here keep 0.8."""
    from service.api.validation.sampler import resolve_sampler
    from service.core.schemas import FitRequest
    from service.core.settings import Settings
    from worker.modeling.sampling import raised_target_accept

    def resolved(**fields: Any) -> float:
        request = FitRequest.model_validate({"data": {"y": [0, 1]}, "formula": "y ~ 1", **fields})
        return resolve_sampler(request, Settings()).target_accept

    assert resolved() == 0.8
    assert resolved(family="bernoulli") == 0.95
    assert resolved(family="poisson", sampler={"target_accept": 0.9}) == 0.9
    assert raised_target_accept(0.8) == pytest.approx(0.95)
    assert raised_target_accept(0.95) == pytest.approx(0.9875)
    assert raised_target_accept(0.995) == 0.99
