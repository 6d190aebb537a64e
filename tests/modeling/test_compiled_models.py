"""A model structure is compiled once: later fits feed it their data and priors.

These tests run the worker's modelling code in this process with real Bambi, PyMC and
nutpie (no service). The reused compiled model must sample exactly what a fresh compile of
the same data samples, and agree with Bambi's own ``Model.fit``.

Two compiled models give the same bits only if their code has no fast-math: with it, LLVM
may reassociate and fuse differently in each (see ``compiled``). The tests that compare bits
check first that the code they compare has none.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import bambi as bmb
import numpy as np
import nutpie
import pandas as pd
import pytest

from service.core.schemas import ResolvedSampler
from worker.modeling import compiled as compiled_module
from worker.modeling.compiled import CompiledModels, lift
from worker.modeling.sampling import SampleResult, sample
from worker.modeling.shared_inputs import straight_line_readers

#: LLVM's fast-math flags on a floating-point instruction or call.
FAST_MATH = re.compile(
    r"\b(?:fadd|fsub|fmul|fdiv|frem|fneg|fcmp|call)"
    r"((?: (?:fast|reassoc|nnan|ninf|nsz|arcp|contract|afn))+) "
)
SAMPLER = ResolvedSampler(draws=500, tune=500, chains=2, seed=7, target_accept=0.8, method="nutpie")
FORMULA = "y ~ x + (1 | g)"


def study(seed: int, groups: int = 12, per_group: int = 30, shift: float = 0.0) -> pd.DataFrame:
    """Grouped data with known effects: y = 1 + shift + 0.7 x + b_g + noise."""
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(groups), per_group)
    x = rng.normal(size=g.size)
    y = 1 + shift + 0.7 * x + rng.normal(0, 0.8, groups)[g] + rng.normal(0, 1, g.size)
    return pd.DataFrame({"y": y, "x": x, "g": [f"s{seed}-{i}" for i in g]})


def fit(
    data: pd.DataFrame,
    cache: CompiledModels,
    sampler: ResolvedSampler = SAMPLER,
    **model_args: Any,
) -> SampleResult:
    return sample(
        bmb.Model(FORMULA, data, **model_args), sampler, lambda _: None, compiled_models=cache
    )


@pytest.fixture(scope="module")
def counted_compiles() -> Iterator[list[str]]:
    """Every nutpie compilation made through the cache, by structure key."""
    calls: list[str] = []
    original = compiled_module.nutpie.compile_pymc_model

    def counting(model: Any, **kwargs: Any) -> Any:
        calls.append(model.name)
        return original(model, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(compiled_module.nutpie, "compile_pymc_model", counting)
        yield calls


def fast_math(compiled: nutpie.compile_pymc.CompiledPyMCModel) -> set[str]:
    """The fast-math flags anywhere in the code nutpie calls (logp and expansion)."""
    functions = (compiled.compiled_logp_func, compiled.compiled_expand_func)
    code = [function.inspect_llvm() for function in functions]
    return {flag for text in code for flags in FAST_MATH.findall(text) for flag in flags.split()}


def compiled_for(
    data: pd.DataFrame, models: CompiledModels
) -> nutpie.compile_pymc.CompiledPyMCModel:
    """The compiled model ``models`` holds for ``data``'s structure."""
    model = bmb.Model(FORMULA, data)
    model.build()
    compiled, compiled_now = models.get(lift(model), [])
    assert not compiled_now
    return compiled


def key(data: pd.DataFrame, formula: str = FORMULA, **model_args: Any) -> str:
    model = bmb.Model(formula, data, **model_args)
    model.build()
    return lift(model).key


def test_the_structure_key_ignores_numbers_and_sees_shapes() -> None:
    base = key(study(1))
    assert key(study(2, shift=5.0)) == base, "new data, same structure"
    assert key(study(1), priors={"x": bmb.Prior("Normal", mu=0, sigma=3)}) == base, (
        "prior parameters are inputs"
    )
    assert key(study(1, groups=13)) != base, "one more group is one more parameter"
    assert key(study(1, per_group=20)) == base, "a gaussian likelihood reads only sums"
    assert key(study(1, per_group=20), family="t") != key(study(1), family="t"), (
        "a row-wise likelihood has its row count compiled in"
    )
    assert key(study(1), priors={"x": bmb.Prior("StudentT", nu=4, mu=0, sigma=3)}) != base
    assert key(study(1), formula="y ~ x + (x | g)") != base
    assert key(study(1), family="t") != base
    assert key(study(1), noncentered=False) != base


@pytest.fixture(scope="module")
def warm(counted_compiles: list[str]) -> tuple[CompiledModels, SampleResult]:
    """A process's compiled models after one fit of the test structure."""
    cache = CompiledModels(size=4)
    return cache, fit(study(1), cache)


def test_a_second_fit_of_the_same_structure_does_not_compile(
    warm: tuple[CompiledModels, SampleResult], counted_compiles: list[str]
) -> None:
    cache, first = warm
    second = fit(study(2, shift=5.0), cache)
    assert (first.compiled_now, second.compiled_now) == (True, False)
    assert len(counted_compiles) == 1
    assert second.compile_s < 0.5
    # The reused model sampled the second data set, under the second data set's labels.
    shifted = float(second.posterior["Intercept"].mean()) - float(
        first.posterior["Intercept"].mean()
    )
    assert shifted > 3
    assert list(second.posterior["1|g"].coords["g__factor_dim"].values[:2]) == ["s2-0", "s2-1"]


def test_a_reused_model_samples_what_a_fresh_compile_samples(
    warm: tuple[CompiledModels, SampleResult],
) -> None:
    reused = fit(study(3, shift=-2.0), warm[0])
    fresh_models = CompiledModels(size=4)
    fresh = fit(study(3, shift=-2.0), fresh_models)
    assert not reused.compiled_now and fresh.compiled_now
    for models in (warm[0], fresh_models):
        assert fast_math(compiled_for(study(3, shift=-2.0), models)) == set()
    for name in ("Intercept", "x", "sigma", "1|g_sigma", "1|g"):
        np.testing.assert_array_equal(reused.posterior[name].values, fresh.posterior[name].values)


def test_reused_priors_are_the_new_fits_priors(warm: tuple[CompiledModels, SampleResult]) -> None:
    """A tight prior on x, fed to a compiled model built with Bambi's default prior."""
    tight = fit(study(1), warm[0], priors={"x": bmb.Prior("Normal", mu=3, sigma=0.01)})
    assert not tight.compiled_now
    assert abs(float(tight.posterior["x"].mean()) - 3) < 0.05


def test_a_reused_model_agrees_with_bambis_own_fit(
    warm: tuple[CompiledModels, SampleResult],
) -> None:
    """4,000 draws a side: from 2 x 500, the SD of ``1|g_sigma`` ranged over 0.26-0.34 with
    seeds 5-12 (Bambi: 0.31-0.35); from 4 x 1,000, its ratio to Bambi's stays in 0.81-1.11."""
    data = study(4, shift=1.5)
    ours = fit(data, warm[0], SAMPLER.model_copy(update={"draws": 1000, "tune": 1000, "chains": 4}))
    assert not ours.compiled_now
    theirs = (
        bmb.Model(FORMULA, data)
        .fit(
            inference_method="nutpie",
            draws=1000,
            tune=1000,
            chains=4,
            random_seed=11,
            progressbar=False,
        )
        .posterior
    )
    for name in ("Intercept", "x", "sigma", "1|g_sigma"):
        sd = float(theirs[name].std())
        mean = float(ours.posterior[name].mean())
        assert abs(mean - float(theirs[name].mean())) < 0.35 * sd, name
        assert 0.8 < float(ours.posterior[name].std()) / sd < 1.25, name


def test_the_written_out_input_reader_samples_what_nutpies_own_reader_samples() -> None:
    """``shared_inputs`` only changes how fast the model compiles, not what it samples."""
    model = bmb.Model(FORMULA, study(5))
    model.build()
    lifted = lift(model)
    assert {value.ndim for value in lifted.inputs.values()} >= {0, 1, 2}

    def draws(compiled: Any) -> np.ndarray:
        trace = nutpie.sample(compiled, draws=100, tune=100, chains=2, seed=3, progress_bar=False)
        return np.asarray(trace.posterior["x"].values)

    with straight_line_readers():
        ours = nutpie.compile_pymc_model(lifted.model)
    theirs = nutpie.compile_pymc_model(lifted.model)
    assert fast_math(ours) == fast_math(theirs) == set()
    np.testing.assert_array_equal(draws(ours), draws(theirs))
    changed = {name: value + 1.0 for name, value in lifted.inputs.items() if value.ndim == 2}
    np.testing.assert_array_equal(
        draws(ours.with_data(**changed)), draws(theirs.with_data(**changed))
    )


def test_a_group_sd_fixed_by_a_constant_prior_is_reused_with_its_model() -> None:
    """nutpie holds the fixed SD as a shared variable of its own, computed when it compiled:
    a later fit of the structure reuses the compiled model (it raised KeyError) with its
    own fixed value (another value was reported as the first's)."""
    from service.core.schemas import FitSpec, PriorSpec
    from worker.modeling.building import build_model

    def spec(value: float) -> FitSpec:
        data = study(3)
        fixed = PriorSpec(dist="Constant", params={"value": value})
        return FitSpec(
            formula=FORMULA,
            family="gaussian",
            link="identity",
            columns={c: data[c].tolist() for c in data},
            sampler=SAMPLER,
            priors={"1|g": PriorSpec(dist="Normal", params={"mu": 0, "sigma": fixed})},
        )

    cache = CompiledModels(size=3)
    first = sample(build_model(spec(1.0)), SAMPLER, lambda _: None, compiled_models=cache)
    again = sample(build_model(spec(1.0)), SAMPLER, lambda _: None, compiled_models=cache)
    other = sample(build_model(spec(2.0)), SAMPLER, lambda _: None, compiled_models=cache)
    assert first.compiled_now and not again.compiled_now and not other.compiled_now
    assert float(first.posterior["1|g_sigma"].mean()) == 1.0
    assert float(other.posterior["1|g_sigma"].mean()) == 2.0
    # the effects are offsets times the fixed SD: those of a fresh compile (a stale SD of 1
    # would halve them)
    fresh = sample(build_model(spec(2.0)), SAMPLER, lambda _: None)
    np.testing.assert_allclose(
        other.posterior["1|g"].mean(("chain", "draw")),
        fresh.posterior["1|g"].mean(("chain", "draw")),
        rtol=0.1,
        atol=0.02,
    )
