"""Formula features over HTTP: varying slopes, crossed and nested factors, interactions,
categorical predictors and transforms; priors as sent; the dry run; missing values."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.e2e.conftest import QUICK, wait_for_fit
from tests.support.synthetic import features

pytestmark = pytest.mark.e2e


def fit(client: httpx.Client, **request: Any) -> str:
    body = {"data": features(), "sampler": {**QUICK, "seed": 9}} | request
    response = client.post("/v1/fits", json=body)
    assert response.status_code == 202, response.text
    location: str = response.headers["location"]
    record = wait_for_fit(client, location)
    assert record["status"] == "succeeded", record["error"]
    return location


def summary(client: httpx.Client, location: str) -> dict[str, dict[str, Any]]:
    return {
        p["name"] if p["level"] is None else f"{p['name']}[{p['level']}]": p
        for p in client.get(f"{location}/summary").json()["parameters"]
    }


def test_varying_intercepts_and_slopes(client: httpx.Client) -> None:
    location = fit(client, formula="y ~ x + (x | g)")
    params = summary(client, location)
    assert params["1|g_sigma"]["kind"] == params["x|g_sigma"]["kind"] == "group_sd"
    groups = client.get(f"{location}/groups/g").json()
    slope = params["x"]["mean"]
    for level in groups["levels"]:
        effects = {e["term"]: e for e in level["effects"]}
        assert set(effects) == {"1|g", "x|g"}
        assert effects["x|g"]["coef"]["mean"] == pytest.approx(
            slope + effects["x|g"]["ranef"]["mean"]
        )
    # (x | g) correlates its intercepts and slopes, as lme4 does: VarCorr of the factor
    correlation = params["1|g:x|g_corr"]
    assert correlation["kind"] == "group_corr" and -1 < correlation["mean"] < 1
    assert groups["terms"] == ["1|g", "x|g"]
    assert groups["sd"][1]["mean"] == pytest.approx(params["x|g_sigma"]["mean"])
    assert groups["corr"][0][1]["mean"] == pytest.approx(correlation["mean"])
    assert groups["corr"][0][0]["mean"] == 1


def test_crossed_factors(client: httpx.Client) -> None:
    location = fit(client, formula="y ~ x + (1 | g) + (1 | h)")
    factors = client.get(f"{location}/groups").json()["factors"]
    assert {f["factor"]: f["levels"] for f in factors} == {"g": 6, "h": 5}
    rows = {"x": [0.0, 0.0], "g": ["g1", "new"], "h": ["new", "h2"]}
    predicted = client.post(f"{location}/predictions", json={"data": rows}).json()["rows"]
    assert predicted[0]["groups"] == {"g": "seen", "h": "new"}
    assert predicted[1]["groups"] == {"g": "new", "h": "seen"}


def test_nested_groups_predict_a_new_inner_level_in_a_known_outer_one(
    client: httpx.Client,
) -> None:
    location = fit(client, formula="y ~ 1 + (1 | a/b)")
    factors = {f["factor"]: f for f in client.get(f"{location}/groups").json()["factors"]}
    assert set(factors) == {"a", "a:b"}
    assert factors["a:b"]["levels"] == 12
    rows = {"a": ["a1", "a1", "a-new"], "b": ["b0", "b-new", "b-new"]}
    predicted = client.post(f"{location}/predictions", json={"data": rows}).json()["rows"]
    assert [r["groups"] for r in predicted] == [
        {"a": "seen", "a:b": "seen"},
        {"a": "seen", "a:b": "new"},
        {"a": "new", "a:b": "new"},
    ]
    # the more that is new, the less certain the prediction
    assert predicted[0]["sd"] < predicted[1]["sd"] < predicted[2]["sd"]


def test_interactions_categories_and_transforms(client: httpx.Client) -> None:
    location = fit(client, formula="y ~ x * z + C(c) + log(w) + I(x ** 2) + scale(z) + (1 | g)")
    params = summary(client, location)
    assert {"x", "z", "x:z", "log(w)", "I(x ** 2)", "scale(z)"} <= set(params)
    # a categorical predictor has one effect per non-reference level
    assert {"C(c)[green]", "C(c)[red]"} <= set(params)
    assert params["x:z"]["lower"] < 0.3 < params["x:z"]["upper"]


def test_a_column_declared_categorical(client: httpx.Client) -> None:
    location = fit(client, formula="y ~ k + (1 | g)", categorical={"k": [3, 1, 2]})
    params = summary(client, location)
    assert {"k[1]", "k[2]"} <= set(params)  # 3 is the reference level: listed first


def test_requested_priors_are_used_and_defaults_are_listed(client: httpx.Client) -> None:
    location = fit(
        client,
        formula="y ~ x + (1 | g)",
        priors={
            "x": {"dist": "StudentT", "params": {"nu": 3, "mu": 0, "sigma": 2.5}},
            "1|g": {
                "dist": "Normal",
                "params": {"mu": 0, "sigma": {"dist": "Exponential", "params": {"lam": 1}}},
            },
        },
    )
    priors = {p["term"]: p for p in client.get(f"{location}/priors").json()["priors"]}
    assert priors["x"] == {
        "term": "x",
        "kind": "common",
        "dist": "StudentT",
        "params": {"nu": 3.0, "mu": 0.0, "sigma": 2.5},
    }
    assert priors["1|g"]["params"]["sigma"] == {"dist": "Exponential", "params": {"lam": 1.0}}
    # defaults are listed too, with their data-scaled values
    assert priors["Intercept"]["dist"] == "Normal"
    assert priors["sigma"]["kind"] == "auxiliary"


def test_the_dry_run_describes_without_sampling(client: httpx.Client) -> None:
    before = len(client.get("/v1/fits", params={"limit": 100}).json())
    response = client.post(
        "/v1/models/validate",
        json={"data": features(), "formula": "y ~ x + (x | g) + (1 | h)"},
    )
    assert response.status_code == 200, response.text
    model = response.json()
    assert model["n_obs"] == 240
    assert {g["factor"]: g["levels"] for g in model["groups"]} == {"g": 6, "h": 5}
    # Intercept, x, sigma, three group SDs, 6 + 6 + 5 group offsets, the correlation of
    # g's intercepts and slopes
    assert model["n_parameters"] == 3 + 3 + 17 + 1
    assert {p["term"] for p in model["priors"]} == {
        "Intercept",
        "x",
        "1|g",
        "x|g",
        "1|h",
        "sigma",
        "1|g:x|g_corr",
    }
    assert len(client.get("/v1/fits", params={"limit": 100}).json()) == before


def test_the_dry_run_refuses_what_a_fit_would_refuse(client: httpx.Client) -> None:
    response = client.post(
        "/v1/models/validate",
        json={
            "data": features(),
            "formula": "y ~ x + (1 | g)",
            "priors": {"slope": {"dist": "Normal", "params": {"mu": 0, "sigma": 1}}},
        },
    )
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "priors.slope"


def test_incomplete_rows_are_dropped_on_request_and_counted(client: httpx.Client) -> None:
    data = features()
    data["x"][:7] = [None] * 7
    refused = client.post("/v1/fits", json={"data": data, "formula": "y ~ x + (1 | g)"})
    assert refused.status_code == 422
    assert refused.json()["errors"][0] == {
        "field": "data.x",
        "message": "7 missing values (send na_action 'drop' to drop those rows)",
    }
    location = fit(client, data=data, formula="y ~ x + (1 | g)", na_action="drop")
    record = client.get(location).json()
    assert (record["n_obs"], record["n_dropped"]) == (233, 7)


def test_a_known_per_row_sd_fits_and_predicts(client: httpx.Client) -> None:
    data = features()
    data["log_sd"] = [-0.5] * len(data["y"])
    location = fit(
        client,
        data=data,
        formula="y ~ x + (1 | g)",
        distributional={"sigma": "0 + offset(log_sd)"},
    )
    assert "sigma" not in summary(client, location)  # known, not estimated
    rows = {"x": [0.0, 0.0], "g": ["g1", "new"], "log_sd": [-0.5, -0.5]}
    answer = client.post(f"{location}/predictions", json={"data": rows, "kind": "response"})
    assert answer.status_code == 200, answer.text
    assert [r["groups"]["g"] for r in answer.json()["rows"]] == ["seen", "new"]


def test_new_levels_of_a_declared_factor_are_told_apart(client: httpx.Client) -> None:
    levels = [f"g{i}" for i in range(6)]
    location = fit(client, formula="y ~ x + (1 | g)", categorical={"g": levels})
    rows = {"x": [0.0] * 3, "g": ["new-a", "new-b", "new-a"]}
    predicted = client.post(f"{location}/predictions", json={"data": rows, "seed": 3}).json()
    a, b, a_again = predicted["rows"]
    assert a["mean"] != b["mean"]
    assert a["mean"] == a_again["mean"]


def test_a_categorical_group_expression_has_no_single_coef(client: httpx.Client) -> None:
    location = fit(client, formula="y ~ C(c) + (0 + C(c) | g)")
    level = client.get(f"{location}/groups/g").json()["levels"][0]
    assert len(level["effects"]) == 3  # one per colour
    assert all(e["coef"] is None and e["ranef"]["sd"] > 0 for e in level["effects"])


def test_an_intercept_only_model_predicts_every_row_sent(client: httpx.Client) -> None:
    location = fit(client, formula="y ~ 1")
    intercept = summary(client, location)["Intercept"]["mean"]
    for kind in ("mean", "response"):
        response = client.post(
            f"{location}/predictions", json={"data": {"g": ["a", "b", "c"]}, "kind": kind}
        )
        assert response.status_code == 200, response.text
        rows = response.json()["rows"]
        assert [row["row"] for row in rows] == [0, 1, 2]
        assert all(row["groups"] == {} for row in rows)
        if kind == "mean":
            assert {round(row["mean"], 9) for row in rows} == {round(intercept, 9)}
