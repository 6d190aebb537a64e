"""Group effects are sampled centred where the data identify the groups well, and the
centred model is Bambi's model: the same posterior as Bambi's own non-centred fit."""

from __future__ import annotations

from typing import Any

import bambi as bmb
import numpy as np
import pandas as pd
import pytest

from service.core.schemas import ResolvedSampler
from tests.conftest import SEED_CSV
from tests.support.reference import load
from worker.modeling.compiled import lift
from worker.modeling.parameterization import apply, identification, residuals_after_common_terms
from worker.modeling.sampling import sample

SAMPLER = ResolvedSampler(
    draws=1000, tune=1000, chains=2, seed=3, target_accept=0.8, method="nutpie"
)


def seed_study() -> pd.DataFrame:
    return pd.read_csv(SEED_CSV)


def grouped(groups: int, per_group: int, group_sd: float, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(groups), per_group)
    y = rng.normal(0, group_sd, groups)[g] + rng.normal(0, 1, g.size)
    return pd.DataFrame({"y": y, "g": g.astype(str)})


def chosen(formula: str, data: pd.DataFrame, **kwargs: Any) -> str:
    return apply(bmb.Model(formula, data, **kwargs), "auto").parameterization


def test_identification_is_n_tau2_over_sigma2_for_an_intercept() -> None:
    data = grouped(400, 20, group_sd=0.5)
    ratio = identification(data["y"].to_numpy(), data["g"].to_numpy(), np.ones(len(data)))
    assert ratio == pytest.approx(20 * 0.5**2 / 1.0, rel=0.25)


def test_auto_centres_only_well_identified_gaussian_groups() -> None:
    assert chosen("score ~ (1 | school)", seed_study()) == "centered"
    assert chosen("y ~ (1 | g)", grouped(30, 20, group_sd=1.0)) == "centered"
    assert chosen("y ~ (1 | g)", grouped(30, 20, group_sd=0.05)) == "noncentered"
    assert chosen("y ~ (1 | g)", grouped(30, 1, group_sd=1.0)) == "noncentered"
    binary = grouped(30, 20, group_sd=1.0).assign(y=lambda d: (d.y > 0).astype(int))
    assert chosen("y ~ (1 | g)", binary, family="bernoulli") == "noncentered"


def test_common_predictors_take_their_share_before_groups_are_judged() -> None:
    """Radon: log uranium and the floor explain half of what tells Minnesota's counties
    apart; about 11 homes per county then identify the county effects weakly."""
    data, _ = load("radon_contextual_effects_mn_halfnormal")
    frame = pd.DataFrame({k: data[k] for k in ("log_radon", "log_uranium", "floor")})
    frame["county"] = [str(c) for c in data["county"]]
    ratios = []
    for formula in ("log_radon ~ (1 | county)", "log_radon ~ log_uranium + floor + (1 | county)"):
        model = bmb.Model(formula, frame)
        term = model.components["mu"].group_specific_terms["1|county"]
        ratios.append(
            identification(
                residuals_after_common_terms(model), term.group_index, np.ones(len(frame))
            )
        )
        assert apply(model, "auto").parameterization == "noncentered"
    assert ratios[1] < 0.6 * ratios[0] < 1


def test_requests_are_honoured() -> None:
    model = bmb.Model("y ~ (1 | g)", grouped(30, 1, group_sd=1.0))
    choice = apply(model, "centered")
    assert (choice.parameterization, choice.reason) == ("centered", "requested")
    assert model.noncentered is False
    assert choice.centre_on_intercept == "1|g"


def test_the_centred_graph_samples_group_means_and_keeps_bambis_variables() -> None:
    model = bmb.Model("score ~ (1 | school)", seed_study(), noncentered=False)
    model.build()
    free = {rv.name for rv in lift(model, "1|school").model.free_RVs}
    assert free == {"Intercept", "sigma", "1|school_sigma", "1|school_means"}
    assert {d.name for d in lift(model, "1|school").model.deterministics} >= {"1|school"}


def test_centred_sampling_gives_bambis_posterior_with_far_more_effective_draws() -> None:
    import arviz as az

    data = seed_study()
    model = bmb.Model("score ~ (1 | school)", data)
    choice = apply(model, "auto")
    ours = sample(model, SAMPLER, lambda _: None, centre_on=choice.centre_on_intercept)
    theirs = (
        bmb.Model("score ~ (1 | school)", data)
        .fit(
            inference_method="nutpie",
            draws=4000,
            tune=1000,
            chains=2,
            random_seed=5,
            progressbar=False,
        )
        .posterior
    )
    for name in ("Intercept", "sigma", "1|school_sigma", "1|school"):
        sd = float(theirs[name].std())
        difference = np.abs(
            ours.posterior[name].mean(("chain", "draw")) - theirs[name].mean(("chain", "draw"))
        )
        assert float(difference.max()) < 0.25 * sd, name
    ess = az.ess(ours.posterior[["Intercept"]], method="bulk")
    assert float(ess["Intercept"]) > 1000  # Bambi's parameterization: about 60 of 2,000
