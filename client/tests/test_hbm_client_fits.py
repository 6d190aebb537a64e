"""Fitting and reading results: what the client sends (data in any of its forms, only the
options set), how it waits (polling, bars per chain, a timeout), what it returns (typed
models that tolerate new fields, DataFrames), the same through the async client."""

from __future__ import annotations

import asyncio
import json
import math
import sys
from typing import Any

import numpy
import pandas
import pytest
from conftest import Clock, Service, record, running

from hbm_client import AsyncClient, Client, Prior, Sampler

URL = "http://hbm.test"
INTERVAL = {"kind": "hdi", "prob": 0.94}


def estimate(mean: float) -> dict[str, float]:
    return {"mean": mean, "sd": 1.0, "lower": mean - 2, "upper": mean + 2}


SUMMARY = {
    "fit_id": "f1",
    "interval": INTERVAL,
    "parameters": [
        {**estimate(m), "name": n, "kind": k, "term": t, "mcse_mean": 0.01, "mcse_sd": 0.01}
        for n, k, t, m in [
            ("Intercept", "fixed", "Intercept", 1.0),
            ("1|school_sigma", "group_sd", "1|school", 5.0),
            ("sigma", "auxiliary", "sigma", 3.0),
        ]
    ],
}
GROUPS = {
    "fit_id": "f1",
    "factor": "school",
    "interval": INTERVAL,
    "terms": ["1|school"],
    "sd": [estimate(5.0)],
    "corr": [[None]],
    "levels": [
        {
            "level": level,
            "n_obs": 2,
            "effects": [
                {
                    "term": "1|school",
                    "ranef": estimate(0.5),
                    "coef": estimate(1.5),
                    "no_pooling": {"estimate": 1.7, "se": 0.4} if level == "1" else None,
                    "pooling_factor": 0.1 if level == "1" else None,
                }
            ],
        }
        for level in ("1", "2")
    ],
}
PREDICTIONS = {
    "fit_id": "f1",
    "kind": "response",
    "interval": INTERVAL,
    "rows": [
        {**estimate(1.5), "row": 0, "groups": {"school": "seen"}},
        {**estimate(1.0), "row": 1, "groups": {"school": "new"}},
    ],
}


def body(service: Service, method: str, path: str) -> Any:
    return json.loads(service.sent(method, path)[-1].content)


def test_a_dataframe_is_sent_as_columns_with_missing_values_as_null(service: Service) -> None:
    service.on("POST", "/v1/fits", record("queued"))
    hbm = Client(URL, transport=service.transport())
    frame = pandas.DataFrame({"school": [1, 2], "score": [0.5, math.nan]})
    frame["label"] = pandas.array(["a", None], dtype="string")
    hbm.fit(frame, "score ~ (1 | school)", wait=False)
    expected = {"school": [1, 2], "score": [0.5, None], "label": ["a", None]}
    assert body(service, "POST", "/v1/fits")["data"] == expected
    # numpy arrays as columns: their scalars become JSON numbers and booleans.
    columns = {"school": numpy.array([1, 2]), "score": numpy.array([0.5, numpy.nan])}
    hbm.fit(columns | {"flag": numpy.array([True, False])}, "score ~ 1", wait=False)
    sent = body(service, "POST", "/v1/fits")["data"]
    assert sent == {"school": [1, 2], "score": [0.5, None], "flag": [True, False]}


def test_records_and_columns_are_sent_as_given_and_only_the_options_set(
    service: Service,
) -> None:
    service.on("POST", "/v1/fits", record("queued"))
    hbm = Client(URL, transport=service.transport())
    records = [{"school": 1, "score": 0.5}, {"school": 2, "score": None}]
    hbm.fit(records, "score ~ (1 | school)", wait=False)
    assert body(service, "POST", "/v1/fits") == {
        "data": records,
        "formula": "score ~ (1 | school)",
    }
    hbm.fit(
        {"school": (1, 2), "score": [0.5, 1.5]},
        "score ~ (1 | school)",
        family="t",
        sampler=Sampler(draws=300, seed=7),
        priors={"1|school": Prior(dist="Normal", params={"mu": 0, "sigma": 2})},
        name="seed",
        distributional={"sigma": "1"},
        wait=False,
    )
    assert body(service, "POST", "/v1/fits") == {
        "data": {"school": [1, 2], "score": [0.5, 1.5]},
        "formula": "score ~ (1 | school)",
        "family": "t",
        "sampler": {"draws": 300, "seed": 7},
        "priors": {"1|school": {"dist": "Normal", "params": {"mu": 0.0, "sigma": 2.0}}},
        "name": "seed",
        "distributional": {"sigma": "1"},
    }


def test_data_the_service_cannot_read_is_refused_before_sending(service: Service) -> None:
    hbm = Client(URL, transport=service.transport())
    with pytest.raises(TypeError, match="column 'when'"):
        hbm.fit({"when": [object()]}, "y ~ 1", wait=False)
    with pytest.raises(ValueError, match="column 'y': inf"):
        hbm.fit([{"y": math.inf}], "y ~ 1", wait=False)
    with pytest.raises(TypeError, match="mapping of columns or a list of records"):
        hbm.fit("y\n1\n", "y ~ 1", wait=False)
    assert service.requests == []


def test_without_events_fit_polls_until_succeeded_showing_a_bar_per_chain(
    service: Service, clock: Clock, capsys: pytest.CaptureFixture[str]
) -> None:
    service.on("POST", "/v1/fits", record("queued"))
    service.on("GET", "/v1/fits/f1", record("queued"), running(5), running(15), record())
    fit = Client(URL, transport=service.transport()).fit({"y": [1.0]}, "y ~ 1")
    assert fit.status == "succeeded" and fit.id == "f1"
    assert len(service.sent("GET", "/v1/fits/f1")) == 4
    assert clock.sleeps == [0.25, 0.375, 0.5625]  # growing by half, up to 2 s
    bars = capsys.readouterr().err
    assert "chain 0 (warm-up)" in bars and "chain 1" in bars and "20/20" in bars


def test_waiting_longer_than_the_timeout_raises_timeout_error(
    service: Service, clock: Clock
) -> None:
    service.on("GET", "/v1/fits/f1", running(5))
    fit = Client(URL, transport=service.transport()).get_fit("f1")
    with pytest.raises(TimeoutError, match="still running after 10"):
        fit.wait(timeout=10, progress=False)
    assert sum(clock.sleeps) <= 10


def test_results_are_typed_and_keep_fields_a_newer_service_adds(service: Service) -> None:
    service.on("GET", "/v1/fits/f1", record())
    service.on("GET", "/v1/fits/f1/summary", SUMMARY | {"new": "kept"})
    fit = Client(URL, transport=service.transport()).get_fit("f1")
    assert fit.resource.model_extra == {"a_field_from_a_newer_service": {"anything": [1, 2]}}
    summary = fit.summary(prob=0.9, interval="eti")
    assert summary.parameters[1].name == "1|school_sigma"
    assert summary.model_extra == {"new": "kept"}
    query = service.sent("GET", "/v1/fits/f1/summary")[0].url.params
    assert dict(query) == {"prob": "0.9", "interval": "eti"}


def test_summary_groups_and_predictions_are_dataframes(service: Service) -> None:
    service.on("GET", "/v1/fits/f1", record())
    service.on("GET", "/v1/fits/f1/summary", SUMMARY)
    service.on("GET", "/v1/fits/f1/groups/school", GROUPS)
    service.on("POST", "/v1/fits/f1/predictions", PREDICTIONS)
    fit = Client(URL, transport=service.transport()).get_fit("f1")

    summary = fit.summary().to_frame()
    assert list(summary.index) == ["Intercept", "1|school_sigma", "sigma"]
    assert summary.loc["sigma", "mean"] == 3.0

    groups = fit.groups("school").to_frame()
    assert list(groups.index) == ["1", "2"]
    assert groups.loc["1", "coef_mean"] == 1.5 and groups.loc["1", "pooling_factor"] == 0.1
    assert groups.loc["2", "no_pooling"] is None or math.isnan(groups.loc["2", "no_pooling"])

    predictions = fit.predict({"school": [1, 99]}, kind="response", seed=1).to_frame()
    assert list(predictions["group_school"]) == ["seen", "new"]
    assert body(service, "POST", "/v1/fits/f1/predictions") == {
        "data": {"school": [1, 99]},
        "kind": "response",
        "seed": 1,
    }


def test_without_pandas_to_frame_says_which_extra_installs_it(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    service.on("GET", "/v1/fits/f1", record())
    service.on("GET", "/v1/fits/f1/summary", SUMMARY)
    summary = Client(URL, transport=service.transport()).get_fit("f1").summary()
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match=r"pip install 'hbm-client\[pandas\]'"):
        summary.to_frame()


def test_without_tqdm_a_fit_is_waited_on_with_a_warning(
    service: Service, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    service.on("GET", "/v1/fits/f1", running(5), record())
    fit = Client(URL, transport=service.transport()).get_fit("f1")
    with pytest.warns(UserWarning, match=r"hbm-client\[progress\]"):
        fit.wait()
    assert fit.status == "succeeded"


def test_a_factor_name_is_one_path_segment(service: Service) -> None:
    service.on("GET", "/v1/fits/f1", record())
    fit = Client(URL, transport=service.transport()).get_fit("f1")
    with pytest.raises(Exception, match="nothing scripted"):
        fit.groups("a/b c")
    assert service.requests[-1].url.raw_path == b"/v1/fits/f1/groups/a%2Fb%20c"


def test_compare_ppc_loo_and_delete(service: Service) -> None:
    service.on("GET", "/v1/fits/f1", record())
    service.on("POST", "/v1/comparisons", {"n_obs": 4, "models": [], "verdict": "one model"})
    service.on("DELETE", "/v1/fits/f1", record("cancelled"))
    hbm = Client(URL, transport=service.transport())
    fit = hbm.get_fit("f1")
    assert hbm.compare([fit, "f2"]).verdict == "one model"
    assert body(service, "POST", "/v1/comparisons") == {"fit_ids": ["f1", "f2"]}
    with pytest.raises(Exception, match="nothing scripted"):
        fit.ppc(stat="sd", by="school")
    assert dict(service.requests[-1].url.params) == {"stat": "sd", "by": "school"}
    fit.delete()
    assert fit.status == "cancelled"


def test_the_async_client_fits_and_reads_the_same_way(service: Service, clock: Clock) -> None:
    service.on("POST", "/v1/fits", record("queued"))
    service.on("GET", "/v1/fits/f1", running(5), record())
    service.on("GET", "/v1/fits/f1/summary", SUMMARY)
    service.on("POST", "/v1/fits/f1/predictions", PREDICTIONS)

    async def session() -> tuple[str, list[str], list[str]]:
        async with AsyncClient(URL, transport=service.async_transport()) as hbm:
            fit = await hbm.fit({"y": [1.0]}, "y ~ 1", progress=False)
            summary = await fit.summary()
            predictions = await fit.predict({"school": [1, 99]})
            return (
                fit.status,
                [p.name for p in summary.parameters],
                [r.groups["school"] for r in predictions.rows],
            )

    status, names, seen = asyncio.run(session())
    assert status == "succeeded"
    assert names == ["Intercept", "1|school_sigma", "sigma"]
    assert seen == ["seen", "new"]
    assert clock.sleeps == [0.25]
    assert "Idempotency-Key" in service.sent("POST", "/v1/fits")[0].headers
