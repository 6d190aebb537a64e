"""Plots over HTTP: every kind of the seed study's fit answers as PNG and as SVG with its
content type, an ETag and Cache-Control, and a client that has it gets 304; SVG is chosen
by ``format`` or by the Accept header; a fit that has not finished has no plots (409); an
unknown kind, factor or parameter is a 422 naming the field."""

from __future__ import annotations

import io
import time
import xml.etree.ElementTree as ET
from typing import Any, get_args

import httpx
import pytest
from PIL import Image

from service.core.schemas import PlotKind
from tests.e2e.conftest import fit_seed_study, unfinished_fit

pytestmark = pytest.mark.e2e

KINDS: tuple[str, ...] = get_args(PlotKind)
MEDIA_TYPES = {"png": "image/png", "svg": "image/svg+xml"}


@pytest.fixture(scope="module")
def fit_id(deployment: Any, seed_records: list[dict[str, Any]]) -> str:
    """The seed study, ``score ~ (1 | school)``, with small draws."""
    with deployment.client() as client:
        return str(fit_seed_study(client, seed_records, seed=31)["id"])


def plot(client: httpx.Client, fit_id: str, kind: str, **params: Any) -> httpx.Response:
    return client.get(f"/v1/fits/{fit_id}/plots/{kind}", params=params)


def test_a_succeeded_fit_links_its_plots(client: httpx.Client, fit_id: str) -> None:
    links = client.get(f"/v1/fits/{fit_id}").json()["links"]
    assert links["plots"] == f"/v1/fits/{fit_id}/plots/{{kind}}"


@pytest.mark.parametrize("fmt", ["png", "svg"])
@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_answers_as_an_image_that_a_client_may_cache(
    client: httpx.Client, fit_id: str, kind: str, fmt: str
) -> None:
    started = time.perf_counter()
    first = plot(client, fit_id, kind, format=fmt)
    seconds = time.perf_counter() - started
    assert first.status_code == 200, first.text
    assert first.headers["content-type"] == MEDIA_TYPES[fmt]
    assert first.headers["cache-control"] == "private, max-age=86400, immutable"
    etag = first.headers["etag"]
    assert etag.startswith('"plot-') and etag.endswith(f'.{fmt}"')
    if fmt == "png":
        image = Image.open(io.BytesIO(first.content))
        image.load()
        assert image.format == "PNG" and image.size[0] == 800
    else:
        assert ET.fromstring(first.content).tag == "{http://www.w3.org/2000/svg}svg"
    again = plot(client, fit_id, kind, format=fmt)  # served from storage: the same bytes
    assert again.status_code == 200 and again.content == first.content
    assert again.headers["etag"] == etag
    cached = client.get(
        f"/v1/fits/{fit_id}/plots/{kind}", params={"format": fmt}, headers={"If-None-Match": etag}
    )
    assert cached.status_code == 304 and cached.content == b""
    assert cached.headers["etag"] == etag
    print(f"{kind} {fmt}: first answer in {seconds:.2f} s, {len(first.content)} bytes")


def test_without_format_the_accept_header_chooses_svg_or_png(
    client: httpx.Client, fit_id: str
) -> None:
    svg = client.get(
        f"/v1/fits/{fit_id}/plots/forest", headers={"Accept": "image/svg+xml, image/png;q=0.5"}
    )
    assert svg.status_code == 200 and svg.headers["content-type"] == "image/svg+xml"
    assert svg.headers["vary"] == "Accept"
    browser = "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8"
    png = client.get(f"/v1/fits/{fit_id}/plots/forest", headers={"Accept": browser})
    assert png.headers["content-type"] == "image/png"
    assert png.content == plot(client, fit_id, "forest", format="png").content


def test_choices_shape_the_picture_and_name_another_file(client: httpx.Client, fit_id: str) -> None:
    whole = plot(client, fit_id, "caterpillar")
    narrow = plot(client, fit_id, "caterpillar", prob=0.5, factor="school", page=1)
    assert narrow.status_code == 200, narrow.text
    assert narrow.headers["etag"] != whole.headers["etag"]
    sigma = plot(client, fit_id, "trace", var=["sigma", "Intercept"])
    assert sigma.status_code == 200, sigma.text
    # A choice the kind does not use is left out: the same picture, the same file.
    assert (
        plot(client, fit_id, "ppc", factor="school").headers["etag"]
        == (plot(client, fit_id, "ppc").headers["etag"])
    )


def test_a_fit_that_has_not_finished_has_no_plots(
    client: httpx.Client, seed_records: list[dict[str, Any]]
) -> None:
    with unfinished_fit(client, seed_records, seed=17) as location:
        response = client.get(f"{location}/plots/trace")
        assert response.status_code == 409, response.text
        assert response.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize(
    ("kind", "params", "field"),
    [
        ("caterpillar", {"factor": "county"}, "factor"),
        ("shrinkage", {"factor": "county"}, "factor"),
        ("forest", {"var": "tau"}, "var"),
        ("trace", {"var": "1|school"}, "var"),  # 20 values: a trace shows at most 8
        ("caterpillar", {"page": 2}, "page"),  # 20 schools: one page
        ("forest", {"prob": 1.5}, "prob"),
        ("forest", {"format": "gif"}, "format"),
    ],
)
def test_a_choice_the_fit_does_not_have_is_refused_naming_its_field(
    client: httpx.Client, fit_id: str, kind: str, params: dict[str, Any], field: str
) -> None:
    response = plot(client, fit_id, kind, **params)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert [e["field"] for e in response.json()["errors"]] == [field]


def test_an_unknown_kind_is_refused_naming_the_path_field(
    client: httpx.Client, fit_id: str
) -> None:
    response = plot(client, fit_id, "histogram")
    assert response.status_code == 422, response.text
    problem = response.json()
    assert response.headers["content-type"] == "application/problem+json"
    assert problem["status"] == 422 and problem["title"]
    assert [e["field"] for e in problem["errors"]] == ["kind"]
    assert "histogram" not in response.text  # inputs are never echoed back
