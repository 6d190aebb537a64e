"""The Python client (``client/``, ``hbm_client``) against a real deployment: the seed
study's ``score ~ (1 | school)`` fitted from a DataFrame, its results as DataFrames,
refusals as exceptions naming the field, a named model's round trip, and the async client
doing the same."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pandas
import pytest
from hbm_client import AsyncClient, Client, Conflict, Fit, InvalidRequest, NotFound, Sampler

from tests.e2e.conftest import QUICK, Deployment

pytestmark = pytest.mark.e2e

PARAMETERS = {"Intercept", "1|school_sigma", "sigma"}


@pytest.fixture(scope="module")
def hbm(deployment: Deployment) -> Iterator[Client]:
    with Client(deployment.base_url, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def seed_fit(hbm: Client, seed_columns: dict[str, list[Any]]) -> Fit:
    """The seed study fitted through the client (waited on, progress bars on stderr)."""
    students = pandas.DataFrame(seed_columns)
    sampler = Sampler(**QUICK, seed=11)
    return hbm.fit(students, "score ~ (1 | school)", sampler=sampler, name="client")


def test_fit_waits_until_the_fit_has_succeeded(seed_fit: Fit) -> None:
    assert seed_fit.status == "succeeded"
    assert seed_fit.resource.n_obs == 484 and seed_fit.resource.name == "client"
    assert seed_fit.resource.sampler["draws"] == QUICK["draws"]


def test_the_summary_is_a_frame_of_the_models_parameters(seed_fit: Fit) -> None:
    summary = seed_fit.summary().to_frame()
    assert set(summary.index) == PARAMETERS
    assert summary.loc["Intercept", "kind"] == "fixed"
    # lme4 on the same data: sigma 2.94, school SD 4.9.
    assert 2.6 < summary.loc["sigma", "mean"] < 3.3
    assert 3.0 < summary.loc["1|school_sigma", "mean"] < 7.5
    assert (summary["lower"] < summary["mean"]).all() and (summary["mean"] < summary["upper"]).all()


def test_the_school_effects_are_a_frame_of_the_20_schools(seed_fit: Fit) -> None:
    schools = seed_fit.groups("school").to_frame()
    assert len(schools) == 20 and schools.index.is_unique
    assert schools["n_obs"].sum() == 484
    assert set(schools["term"]) == {"1|school"}
    assert schools["pooling_factor"].between(0, 1).all()


def test_predictions_tell_a_seen_school_from_a_new_one(seed_fit: Fit) -> None:
    predictions = seed_fit.predict({"school": [3, 101]}, kind="response", seed=1).to_frame()
    assert list(predictions["group_school"]) == ["seen", "new"]
    width = predictions["upper"] - predictions["lower"]
    assert width[1] > width[0]  # a new school adds the spread between schools


def test_a_refused_request_raises_invalid_request_naming_the_field(
    hbm: Client, seed_records: list[dict[str, Any]]
) -> None:
    with pytest.raises(InvalidRequest) as raised:
        hbm.fit(seed_records, "score ~ (1 | klass)", wait=False)
    assert raised.value.status == 422
    assert raised.value.fields == ["formula"]
    assert "klass" in raised.value.errors[0].message


def test_an_unknown_fit_raises_not_found(hbm: Client) -> None:
    with pytest.raises(NotFound) as raised:
        hbm.get_fit("0" * 32)
    assert raised.value.status == 404


def test_a_fit_promoted_under_a_name_is_served_by_it_until_the_name_is_deleted(
    hbm: Client, seed_fit: Fit
) -> None:
    model = hbm.models.promote("client-seed", seed_fit, note="the seed study")
    assert (model.version, model.fit_id, model.current.note) == (1, seed_fit.id, "the seed study")
    assert hbm.models.get("client-seed").history[0].action == "promote"
    assert "client-seed" in {m.name for m in hbm.models.list(limit=100)}
    predictions = hbm.models.predict("client-seed", {"school": [3, 101]}, seed=1)
    assert (predictions.model.version, predictions.model.fit_id) == (1, seed_fit.id)
    direct = seed_fit.predict({"school": [3, 101]}, seed=1)
    assert predictions.to_frame()["mean"].tolist() == direct.to_frame()["mean"].tolist()
    with pytest.raises(Conflict):
        hbm.models.rollback("client-seed")  # version 1 has nothing before it
    with pytest.raises(Conflict) as in_use:
        seed_fit.delete()
    assert "client-seed" in in_use.value.detail
    hbm.models.delete("client-seed")
    with pytest.raises(NotFound):
        hbm.models.get("client-seed")
    assert seed_fit.refresh().status == "succeeded"  # the fit stays


def test_the_async_client_fits_reads_and_deletes(
    deployment: Deployment, seed_columns: dict[str, list[Any]]
) -> None:
    async def session() -> None:
        async with AsyncClient(deployment.base_url, timeout=120) as hbm:
            fit = await hbm.fit(
                seed_columns, "score ~ (1 | school)", sampler=Sampler(**QUICK, seed=12)
            )
            assert fit.status == "succeeded"
            summary = await fit.summary()
            assert {p.name for p in summary.parameters} == PARAMETERS
            assert len((await fit.groups("school")).levels) == 20
            predictions = await fit.predict({"school": [3, 101]})
            assert [r.groups["school"] for r in predictions.rows] == ["seen", "new"]
            await fit.delete()
            with pytest.raises(NotFound):
                await hbm.get_fit(fit.id)

    asyncio.run(session())
