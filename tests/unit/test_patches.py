"""Every reach into a library's internals (``worker.patches``) still reaches what it was
written for: the installed versions are the ones it names, the internals exist, and each
patch does what it says. When a library moves, these fail first and loudly."""

from __future__ import annotations

import inspect
import resource

import numpy as np
import pytest

from worker import patches


@pytest.mark.parametrize("library", sorted(patches.WRITTEN_FOR))
def test_the_installed_library_is_the_version_the_patches_were_written_for(
    library: str,
) -> None:
    assert patches.installed(library) == patches.WRITTEN_FOR[library], (
        f"{library} moved: re-check worker/patches.py against it, then update WRITTEN_FOR"
    )


def test_billiard_judges_a_pool_process_by_the_memory_it_holds_now() -> None:
    from billiard import pool

    assert callable(pool.mem_rss)  # what billiard's pool processes call after a task
    original = pool.mem_rss
    try:
        patches.read_current_rss_in_billiard()
        block = np.ones(400 * 1024**2 // 8)  # 400 MiB, touched
        assert block.sum() > 0
        del block
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        assert pool.mem_rss is patches.current_rss_kb
        assert pool.mem_rss() < peak_kb - 300 * 1024
    finally:
        pool.mem_rss = original


def test_formulae_encodes_indicators_with_one_byte_inside_the_block_only() -> None:
    from formulae.categorical import Treatment

    original = Treatment.code_with_intercept
    with patches.one_byte_indicators():
        assert Treatment().code_with_intercept(["a", "b", "c"]).matrix.dtype == np.int8
    assert Treatment.code_with_intercept is original
    assert Treatment().code_with_intercept(["a", "b"]).matrix.dtype != np.int8


def test_formulae_still_looks_names_up_in_its_callers_frame() -> None:
    """Why ``in_a_clean_frame`` exists: if formulae stops capturing the caller's frame,
    the clean frame may go (and test_building's shadowing test says whether it can)."""
    from formulae.environment import Environment

    assert "reference" in inspect.signature(Environment.capture).parameters
    marker = object()
    captured = Environment.capture(0, reference=0).namespace
    assert captured["marker"] is marker
    assert patches.in_a_clean_frame(lambda: Environment.capture(1).namespace.get("np")) is None


def test_bambis_backend_still_cleans_results_as_model_fit_does() -> None:
    from bambi.backend.pymc import PyMCModel

    parameters = inspect.signature(PyMCModel._clean_results).parameters
    assert {"idata", "omit_offsets", "include_response_params"} <= set(parameters)


def test_formulae_encodes_an_unseen_level_as_no_level_inside_the_block_only() -> None:
    import formulae
    import pandas as pd

    design = formulae.design_matrices("y ~ (1 | g)", pd.DataFrame({"y": [1.0, 2], "g": ["a", "b"]}))
    term = design.group.terms["1|g"]
    new = pd.DataFrame({"g": ["a", "zzz"]})
    before = formulae.config["EVAL_UNSEEN_CATEGORIES"]
    with patches.unseen_levels_allowed():
        membership = np.asarray(term.factor.eval_new_data(new))
    assert membership.tolist() == [[1, 0], [0, 0]]
    assert formulae.config["EVAL_UNSEEN_CATEGORIES"] == before


def test_pytensor_compiles_without_fast_math_once_asked() -> None:
    from pytensor.configdefaults import config

    before = config.numba__fastmath
    try:
        patches.compile_without_fast_math()
        assert config.numba__fastmath is False
    finally:
        config.numba__fastmath = before


def test_pymc_still_gives_a_new_free_variable_its_default_transform() -> None:
    import pymc as pm

    lkj = patches.new_free_variable(pm.LKJCorr.dist(n=2, eta=1.0), "corr_chol")
    tau = patches.new_free_variable(pm.Gamma.dist(alpha=1.0, beta=1.0), "tau")
    # each is sampled on the unconstrained space its distribution's transform gives
    assert [v.owner.inputs[1].name for v in (lkj, tau)] == [
        "corr_chol_cholesky_corr__",
        "tau_log__",
    ]
    assert [v.name for v in (lkj, tau)] == ["corr_chol", "tau"]
