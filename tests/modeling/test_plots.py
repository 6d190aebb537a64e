"""Plots of a fit, drawn in process as a worker draws them: every kind, as PNG and as SVG,
for a gaussian, a bernoulli and a varying-slopes model; a PNG has the size the figure
announces (at 100 dpi) and an SVG is XML with the same size in points; the same call
writes the same bytes; a choice the fit cannot honour is refused naming the query field;
a 1,000-level caterpillar is drawn in seconds with readable labels.

The fits are small (2 chains x 150 draws, seeded), sampled once and shared; the
1,000-level factor and the refusals that need no sampling use a posterior of the right
shape drawn at random (said where they do).
"""

from __future__ import annotations

import io
import time
import xml.etree.ElementTree as ET
from functools import cache
from pathlib import Path
from typing import Any, get_args

import matplotlib
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from PIL import Image

from service.core.artifacts import LOO_POINTWISE_FILE, Artifacts
from service.core.errors import InvalidRequest
from service.core.protocol import PlotCall
from service.core.schemas import FitSpec, PlotKind, ResolvedSampler
from tests.conftest import SEED_CSV
from tests.support.files import fit_file, fit_folder
from tests.support.synthetic import grouped
from worker.modeling.building import build_model
from worker.modeling.cache import FittedModel
from worker.modeling.sampling import sample
from worker.outputs.figures import DPI, choose_factor, drawing, figure, save
from worker.outputs.plots import DRAWERS, write_plot

SAMPLER = ResolvedSampler(draws=150, tune=200, chains=2, seed=3, target_accept=0.9, method="nutpie")
FIT_ID = "f" * 32
KINDS: tuple[PlotKind, ...] = get_args(PlotKind)
SVG = "{http://www.w3.org/2000/svg}svg"


def spec_of(formula: str, columns: dict[str, list[Any]], family: str = "gaussian") -> FitSpec:
    link = "logit" if family == "bernoulli" else "identity"
    return FitSpec(formula=formula, family=family, link=link, columns=columns, sampler=SAMPLER)


def fitted(formula: str, columns: dict[str, list[Any]], family: str = "gaussian") -> FittedModel:
    spec = spec_of(formula, columns, family)
    model = build_model(spec)
    result = sample(model, SAMPLER, lambda _: None)
    return FittedModel(spec, model, result.posterior, result.sample_stats)


@cache
def model(name: str) -> FittedModel:
    """The seed study (gaussian), 0/1 outcomes in 8 groups, and varying slopes."""
    if name == "gaussian":
        data = pd.read_csv(SEED_CSV)
        columns = {"school": data["school"].tolist(), "score": data["score"].tolist()}
        return fitted("score ~ (1 | school)", columns)
    if name == "bernoulli":
        return fitted("y ~ (1 | g)", grouped("bernoulli"), "bernoulli")
    return fitted("y ~ x + (x | g)", grouped("gaussian"))


@pytest.fixture
def artifacts(tmp_path: Path) -> Artifacts:
    """A data folder with the fit's folder in it (plots are written beside its results)."""
    store = Artifacts(tmp_path)
    fit_folder(store, FIT_ID).mkdir(parents=True)
    return store


def call(kind: PlotKind, fmt: str = "png", **choices: Any) -> PlotCall:
    return PlotCall(
        fit_id=FIT_ID,
        revision="r",
        kind=kind,
        format=fmt,
        prob=choices.pop("prob", 0.94),
        **choices,
    )  # type: ignore[arg-type]


def drawn(artifacts: Artifacts, plot: PlotCall, fit: FittedModel) -> bytes:
    written = write_plot(artifacts, plot, fit)
    assert written.name == plot.file_name()
    payload = artifacts.read_bytes(FIT_ID, written.name)
    assert len(payload) == written.size
    return payload


def png_size(payload: bytes) -> tuple[int, int]:
    image = Image.open(io.BytesIO(payload))
    assert image.format == "PNG"
    image.load()  # decodes the whole image: a truncated file fails here
    return image.size


def svg_size_pt(payload: bytes) -> tuple[float, float]:
    root = ET.fromstring(payload)
    assert root.tag == SVG
    return float(root.attrib["width"].removesuffix("pt")), float(
        root.attrib["height"].removesuffix("pt")
    )


def test_the_worker_draws_with_agg_whatever_the_environment() -> None:
    assert matplotlib.get_backend().lower() == "agg"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", ["gaussian", "bernoulli", "slopes"])
def test_every_kind_draws_a_png_of_the_announced_size_and_the_same_svg(
    artifacts: Artifacts, name: str, kind: PlotKind
) -> None:
    fit = model(name)
    started = time.perf_counter()
    png = drawn(artifacts, call(kind, "png"), fit)
    seconds = time.perf_counter() - started
    svg = drawn(artifacts, call(kind, "svg"), fit)
    width, height = png_size(png)
    panels = 2 if (name, kind) == ("slopes", "caterpillar") else 1
    assert width == 800 + 250 * (panels - 1)  # 8 in (+ 2.5 in a panel) at 100 dpi
    assert 200 <= height <= 2400
    assert svg_size_pt(svg) == pytest.approx((width * 72 / DPI, height * 72 / DPI))
    print(f"{name} {kind}: {width} x {height} px, PNG in {seconds:.2f} s")


@pytest.mark.parametrize("kind", KINDS)
def test_the_same_call_writes_the_same_bytes(artifacts: Artifacts, kind: PlotKind) -> None:
    fit = model("gaussian")
    for fmt in ("png", "svg"):
        plot = call(kind, fmt)
        first = drawn(artifacts, plot, fit)
        fit_file(artifacts, FIT_ID, plot.file_name()).unlink()
        assert drawn(artifacts, plot, fit) == first
        if fmt == "svg":
            assert b"<dc:date>" not in first


def test_an_svg_embeds_a_dense_line_as_an_image(tmp_path: Path) -> None:
    """100,000 rows' Pareto k as SVG marks were 10 MB; past 5,000 points it is an image."""
    with drawing():
        fig = figure(8, 4.5)
        ax = fig.subplots()
        ax.plot(np.arange(20_000), np.sin(np.arange(20_000)))
        ax.plot([0, 1], [0, 1])
        save(fig, tmp_path / "dense.svg", "svg")
    payload = (tmp_path / "dense.svg").read_bytes()
    assert payload.count(b"<image") == 1
    assert len(payload) < 200_000


def test_the_loo_plots_store_the_fits_loo_for_later_calls(artifacts: Artifacts) -> None:
    assert not fit_file(artifacts, FIT_ID, LOO_POINTWISE_FILE).exists()
    drawn(artifacts, call("pareto_k"), model("gaussian"))
    assert fit_file(artifacts, FIT_ID, LOO_POINTWISE_FILE).exists()


def test_a_caterpillar_labels_every_level_with_its_rows() -> None:
    fit = model("gaussian")
    with drawing():
        fig = DRAWERS["caterpillar"](call("caterpillar"), fit, Artifacts(Path("unused")))
        labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    counts = pd.read_csv(SEED_CSV)["school"].value_counts()
    assert len(labels) == 20
    assert sorted(labels) == sorted(f"{school} (n={n})" for school, n in counts.items())


def test_parameters_and_factors_are_chosen_by_name(artifacts: Artifacts) -> None:
    fit = model("slopes")
    for plot in (
        call("trace", var=("sigma", "x|g_sigma")),
        call("forest", var=("1|g",)),
        call("caterpillar", factor="g", prob=0.5),
        call("shrinkage", factor="g"),
    ):
        assert png_size(drawn(artifacts, plot, fit))[0] >= 800


@pytest.mark.parametrize(
    ("plot", "field"),
    [
        (call("trace", var=("tau",)), "var"),
        (call("forest", var=("Intercept", "nonsense")), "var"),
        (call("trace", var=("1|school",)), "var"),  # 20 values: a trace shows at most 8
        (call("caterpillar", factor="county"), "factor"),
        (call("shrinkage", factor="county"), "factor"),
        (call("caterpillar", page=2), "page"),  # 20 schools: one page
    ],
)
def test_a_choice_the_fit_does_not_have_is_refused_naming_its_field(
    artifacts: Artifacts, plot: PlotCall, field: str
) -> None:
    with pytest.raises(InvalidRequest) as refused:
        write_plot(artifacts, plot, model("gaussian"))
    assert [e.field for e in refused.value.errors] == [field]


def test_a_model_with_several_factors_needs_factor() -> None:
    columns = {"y": [0.1, 0.5, 0.9, 1.2], "a": ["p", "q", "p", "q"], "b": ["u", "u", "v", "v"]}
    several = build_model(spec_of("y ~ (1 | a) + (1 | b)", columns))
    with pytest.raises(InvalidRequest) as refused:
        choose_factor(call("caterpillar"), several)
    assert refused.value.errors[0].field == "factor"
    assert choose_factor(call("caterpillar", factor="b"), several)[0] == "b"


@pytest.mark.parametrize("kind", ["loo_pit", "pareto_k"])
def test_the_loo_plots_of_a_fit_with_too_few_draws_are_refused(
    artifacts: Artifacts, kind: PlotKind
) -> None:
    fit = model("gaussian")
    few = FittedModel(fit.spec, fit.model, fit.posterior.isel(draw=slice(10)), fit.sample_stats)
    with pytest.raises(InvalidRequest) as refused:
        write_plot(artifacts, call(kind), few)
    assert refused.value.errors[0].field == "kind"
    assert "25 posterior draws" in refused.value.errors[0].message


def test_shrinkage_is_refused_where_no_level_has_its_own_estimate(artifacts: Artifacts) -> None:
    """A logit model with a predictor: prior draws stand in for the posterior."""
    spec = spec_of("y ~ x + (1 | g)", grouped("bernoulli"), "bernoulli")
    built = build_model(spec)
    built.build()
    prior = built.prior_predictive(draws=50, random_seed=1).prior
    fit = FittedModel(spec, built, prior, xr.Dataset())
    with pytest.raises(InvalidRequest) as refused:
        write_plot(artifacts, call("shrinkage"), fit)
    assert refused.value.errors[0].field == "kind"


def test_the_loo_pit_of_a_family_without_a_predictive_cdf_is_refused(
    artifacts: Artifacts,
) -> None:
    """An ordinal model: prior draws stand in for the posterior (nothing is computed)."""
    spec = FitSpec(
        formula="y ~ x + (1 | g)",
        family="cumulative",
        link="logit",
        columns=grouped("cumulative"),
        sampler=SAMPLER,
    )
    built = build_model(spec)
    built.build()
    prior = built.prior_predictive(draws=50, random_seed=1).prior
    with pytest.raises(InvalidRequest) as refused:
        write_plot(artifacts, call("loo_pit"), FittedModel(spec, built, prior, xr.Dataset()))
    assert refused.value.errors[0].field == "kind"
    assert not fit_file(artifacts, FIT_ID, LOO_POINTWISE_FILE).exists()


@cache
def thousand_levels() -> FittedModel:
    """A model of 1,000 levels (1 to 8 rows each) with a posterior of the shape a default
    fit has (4 chains x 1,000 draws), drawn at random: sampling it takes ~15 s."""
    rng = np.random.default_rng(3)
    g = np.repeat(np.arange(1000), rng.integers(1, 9, 1000))
    columns = {"g": [f"level-{i:04d}" for i in g], "y": rng.normal(size=g.size).tolist()}
    spec = spec_of("y ~ (1 | g)", columns)
    built = build_model(spec)
    term = built.parameters["mu"].group_specific_terms["1|g"]
    shape = (4, 1000)
    effects = rng.normal(rng.normal(0, 1, 1000), 0.5, (*shape, 1000))
    posterior = xr.Dataset(
        {
            "Intercept": (("chain", "draw"), rng.normal(0, 0.1, shape)),
            "sigma": (("chain", "draw"), rng.normal(1, 0.05, shape)),
            "1|g_sigma": (("chain", "draw"), rng.normal(1, 0.05, shape)),
            "1|g": (("chain", "draw", "g__factor_dim"), effects),
        },
        coords={"g__factor_dim": [str(level) for level in term.groups]},
    )
    return FittedModel(spec, built, posterior, xr.Dataset())


def test_a_caterpillar_of_1000_levels_is_drawn_within_5_s_with_readable_labels(
    artifacts: Artifacts,
) -> None:
    fit = thousand_levels()
    for page, labelled, height in ((None, 59, 900), (1, 60, 1170), (17, 40, 830)):
        for fmt in ("png", "svg"):
            started = time.perf_counter()
            drawn(artifacts, call("caterpillar", fmt, page=page), fit)
            seconds = time.perf_counter() - started
            print(f"1,000-level caterpillar, page {page}, {fmt}: {seconds:.2f} s")
            assert seconds < 5
        assert png_size(drawn(artifacts, call("caterpillar", page=page), fit)) == (800, height)
        with drawing():
            fig = DRAWERS["caterpillar"](call("caterpillar", page=page), fit, artifacts)
            labels = fig.axes[0].get_yticklabels()
        assert len(labels) == labelled  # one in 17 of 1,000; 60 on a full page; 40 on the last
