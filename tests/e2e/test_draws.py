"""Draws exports over HTTP against a real deployment: the seed study's draws download as
netCDF (read back by ArviZ), CSV and Parquet, long and wide, streamed as attachments with an
ETag (304 when the client has them), and every file holds the same draws as the netCDF; a
fit that has not finished has none (409); an unknown variable and ``thin=0`` are refused
naming the field."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import arviz
import httpx
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import xarray as xr

from tests.e2e.conftest import fit_seed_study, unfinished_fit

pytestmark = pytest.mark.e2e

MEDIA_TYPES = {
    "netcdf": "application/x-netcdf",
    "csv": "text/csv",
    "parquet": "application/vnd.apache.parquet",
}
EXTENSIONS = {"netcdf": "nc", "csv": "csv", "parquet": "parquet"}
STATS = [
    "lp",
    "acceptance_rate",
    "diverging",
    "energy",
    "energy_error",
    "max_energy_error",
    "tree_depth",
    "reached_max_treedepth",
    "n_steps",
    "step_size",
    "step_size_bar",
]


@pytest.fixture(scope="module")
def fit_id(deployment: Any, seed_records: list[dict[str, Any]]) -> str:
    """The seed study, 2 chains x 300 draws."""
    with deployment.client() as client:
        return str(fit_seed_study(client, seed_records, seed=12)["id"])


def download(client: httpx.Client, fit_id: str, **params: Any) -> tuple[httpx.Response, bytes]:
    """A draws file, read as it streams; its headers say what it is."""
    with client.stream("GET", f"/v1/fits/{fit_id}/draws", params=params) as response:
        body = b"".join(response.iter_bytes())
    assert response.status_code == 200, body[:500]
    assert int(response.headers["content-length"]) == len(body)
    file_format = params.get("format", "netcdf")
    assert response.headers["content-type"].split(";")[0] == MEDIA_TYPES[file_format]
    name = f"{fit_id}-draws.{EXTENSIONS[file_format]}"
    assert response.headers["content-disposition"] == f'attachment; filename="{name}"'
    return response, body


def netcdf_draws(client: httpx.Client, fit_id: str, folder: Path) -> xr.DataTree:
    _, body = download(client, fit_id, format="netcdf", groups=True, sample_stats=True)
    path = folder / "draws.nc"
    path.write_bytes(body)
    return arviz.from_netcdf(path)


def flat(tree: xr.DataTree) -> dict[str, np.ndarray]:
    """Each scalar's (chain, draw) draws from the netCDF, named as the tables name them."""
    posterior = tree["posterior"].to_dataset()
    columns: dict[str, np.ndarray] = {}
    for name in posterior.data_vars:
        variable = posterior[name]
        if variable.ndim == 2:
            columns[str(name)] = variable.values
            continue
        dim = variable.dims[2]
        for i, label in enumerate(posterior[dim].values):
            columns[f"{name}[{label}]"] = variable.values[:, :, i]
    stats = tree["sample_stats"].to_dataset()
    columns |= {f".sample_stats.{s}": stats[s].values for s in STATS}
    return columns


def bits(values: Any) -> np.ndarray:
    """float64 values as their bits: equality of these is exact equality."""
    return np.ascontiguousarray(np.asarray(values, dtype=np.float64)).view(np.int64)


def table(file_format: str, body: bytes) -> pd.DataFrame:
    if file_format == "csv":
        return pd.read_csv(io.BytesIO(body))
    return pq.read_table(io.BytesIO(body)).to_pandas()


def test_a_succeeded_fit_links_its_draws(client: httpx.Client, fit_id: str) -> None:
    assert client.get(f"/v1/fits/{fit_id}").json()["links"]["draws"] == (f"/v1/fits/{fit_id}/draws")


def test_the_netcdf_is_read_back_by_arviz(
    client: httpx.Client, fit_id: str, tmp_path: Path
) -> None:
    tree = netcdf_draws(client, fit_id, tmp_path)
    posterior = tree["posterior"].to_dataset()
    assert list(posterior.data_vars) == ["Intercept", "1|school_sigma", "sigma", "1|school"]
    assert posterior["1|school"].shape == (2, 300, 20)
    assert posterior["draw"].values.tolist() == list(range(300))
    stats = tree["sample_stats"].to_dataset()
    assert list(stats.data_vars) == STATS and stats["diverging"].dtype == bool
    _, default = download(client, fit_id)
    (tmp_path / "default.nc").write_bytes(default)
    assert list(arviz.from_netcdf(tmp_path / "default.nc").children) == ["posterior"]


@pytest.mark.parametrize("file_format", ["csv", "parquet"])
@pytest.mark.parametrize("layout", ["wide", "long"])
def test_every_table_holds_the_same_draws_as_the_netcdf(
    client: httpx.Client, fit_id: str, tmp_path: Path, file_format: str, layout: str
) -> None:
    expected = flat(netcdf_draws(client, fit_id, tmp_path))
    params = {"format": file_format, "layout": layout, "groups": "true", "sample_stats": "true"}
    _, body = download(client, fit_id, **params)
    rows = table(file_format, body)
    if layout == "wide":
        assert list(rows.columns) == ["chain", "draw", *expected]
        assert rows["chain"].tolist() == [0] * 300 + [1] * 300
        assert rows["draw"].tolist() == list(range(300)) * 2
        for name, values in expected.items():
            np.testing.assert_array_equal(bits(rows[name]), bits(values.ravel()), name)
        return
    assert list(rows.columns) == ["chain", "draw", "parameter", "value"]
    assert rows["parameter"].astype(str).tolist() == np.repeat(list(expected), 600).tolist()
    assert rows["draw"].tolist() == list(range(300)) * 2 * len(expected)
    everything = np.concatenate([values.ravel() for values in expected.values()])
    np.testing.assert_array_equal(bits(rows["value"]), bits(everything))


def test_thin_and_var_choose_the_draws_and_the_columns(client: httpx.Client, fit_id: str) -> None:
    _, body = download(client, fit_id, format="csv", thin=10, var=["sigma", "Intercept"])
    rows = table("csv", body)
    assert list(rows.columns) == ["chain", "draw", "Intercept", "sigma"]
    assert rows["draw"].tolist() == list(range(0, 300, 10)) * 2


def test_a_stored_file_is_served_again_and_a_client_that_has_it_gets_304(
    client: httpx.Client, fit_id: str
) -> None:
    first, body = download(client, fit_id, format="parquet", layout="long")
    again, same = download(client, fit_id, format="parquet", layout="long")
    assert same == body and again.headers["etag"] == first.headers["etag"]
    assert "immutable" in first.headers["cache-control"]
    cached = client.get(
        f"/v1/fits/{fit_id}/draws",
        params={"format": "parquet", "layout": "long"},
        headers={"If-None-Match": first.headers["etag"]},
    )
    assert cached.status_code == 304 and cached.content == b""
    other, _ = download(client, fit_id, format="parquet", layout="wide")
    assert other.headers["etag"] != first.headers["etag"]


def test_a_fit_that_has_not_finished_has_no_draws(
    client: httpx.Client, seed_records: list[dict[str, Any]]
) -> None:
    with unfinished_fit(client, seed_records, seed=13) as location:
        response = client.get(f"{location}/draws", params={"format": "csv"})
        assert response.status_code == 409, response.text
        assert response.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"var": "tau"}, "var"),
        ({"var": "1|school"}, "var"),  # a group effect without groups=true
        ({"thin": 0}, "thin"),
        ({"format": "xlsx"}, "format"),
    ],
)
def test_a_refused_export_names_the_field(
    client: httpx.Client, fit_id: str, params: dict[str, Any], field: str
) -> None:
    response = client.get(f"/v1/fits/{fit_id}/draws", params={"format": "csv", **params})
    assert response.status_code == 422, response.text
    assert [e["field"] for e in response.json()["errors"]] == [field]
