"""Every reach into a library's internals, in one place.

Each reach names the library version it was written for (``WRITTEN_FOR``); a test
(``tests/unit/test_patches.py``) fails loudly when an installed version moves past it or
when the internal it relies on is gone, so that an upgrade is a decision, not a surprise.
Nothing here patches anything when imported: callers apply a patch where they need it.

- ``read_current_rss_in_billiard()`` (billiard): Celery's pool replaces a pool process
  above ``worker_max_memory_per_child`` after a task, but billiard reads the process's
  *peak* RSS (``ru_maxrss``): once a fit had peaked above the limit (a 100,000-row model
  does while Bambi builds it), the process was replaced after every later task, compiled
  models and all. The limit is meant for what a process holds after a task. Applied once,
  in the worker's main process (``worker.celery_app``).
- ``one_byte_indicators()`` (formulae): within the block, full-rank categoricals are
  encoded with one byte per entry instead of eight (see ``worker.modeling.building``).
- ``unseen_levels_allowed()`` (formulae): within the block, levels unseen in training are
  encoded as no level instead of an error, through formulae's module-level config.
- ``in_a_clean_frame(target, ...)`` (formulae): formulae looks a formula's names up in the
  locals and globals of the frame that called ``bmb.Model`` before Bambi's namespace; a
  module-level ``log`` logger once made ``log(w)`` call the logger. Called from a frame
  with empty namespaces, only Bambi's namespace and ours resolve a formula's calls.
- ``compile_without_fast_math()`` (pytensor): PyTensor's numba backend compiles with
  fast-math unless told not to; seeded fits must draw the same bits in every process.
- ``new_free_variable(dist, name)`` (pymc): a free variable added to a model's graph by the
  rewrites of ``correlated`` and ``rstanarm_priors``, sampled on the unconstrained space
  of PyMC's default transform for its distribution (``_default_transform``, private).
- ``clean_results(model, trace)`` (bambi): Bambi's own post-processing of a trace, as
  ``Model.fit`` applies it (among others, it turns the intercept of centred predictors back
  into the intercept of the model as written): a private method of its backend.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import version
from typing import Any

import numpy as np
import psutil

#: Library versions (major.minor) these reaches were written for.
WRITTEN_FOR = {
    "billiard": "4.3",
    "formulae": "0.6",
    "bambi": "0.21",
    "nutpie": "0.16",
    "pytensor": "3.3",
    "pymc": "6.4",
}


def installed(library: str) -> str:
    """The installed major.minor version of ``library``."""
    return ".".join(version(library).split(".")[:2])


# ------------------------------------------------------------------------------ billiard


def current_rss_kb() -> int:
    """This process's resident memory now, in KiB."""
    return int(psutil.Process().memory_info().rss // 1024)


def read_current_rss_in_billiard() -> None:
    """Make billiard judge a pool process by the memory it holds now, not its peak."""
    from billiard import pool

    pool.mem_rss = current_rss_kb


# ------------------------------------------------------------------------------ formulae


@contextmanager
def one_byte_indicators() -> Iterator[None]:
    """Within the block, formulae encodes full-rank categoricals with one byte per entry.

    formulae encodes a grouping factor (and any categorical that spans the intercept) by
    indexing an integer identity matrix with each row's level code: a rows x levels matrix
    of 8-byte integers, 800 MB for 100,000 rows in 1,000 groups, most of a large fit's
    peak memory. With an ``int8`` identity the same 0/1 matrix takes an eighth of that.
    """
    from formulae.categorical import ContrastMatrix, Treatment

    original = Treatment.code_with_intercept

    def int8_identity(self: Treatment, levels: list[Any]) -> ContrastMatrix:
        contrast = original(self, levels)
        contrast.matrix = contrast.matrix.astype(np.int8)
        return contrast

    Treatment.code_with_intercept = int8_identity
    try:
        yield
    finally:
        Treatment.code_with_intercept = original


@contextmanager
def unseen_levels_allowed() -> Iterator[None]:
    """Within the block, formulae encodes a level it did not see in training as no level
    (an all-zero indicator row) instead of raising: how predictions find new groups.
    formulae keeps this in a module-level config; it is restored after the block."""
    import formulae

    previous = formulae.config["EVAL_UNSEEN_CATEGORIES"]
    formulae.config["EVAL_UNSEEN_CATEGORIES"] = "silent"
    try:
        yield
    finally:
        formulae.config["EVAL_UNSEEN_CATEGORIES"] = previous


def _clean_caller() -> Any:
    namespace: dict[str, Any] = {"__builtins__": {}}
    exec("def call(target, *args, **kwargs):\n    return target(*args, **kwargs)\n", namespace)
    return namespace["call"]


#: ``in_a_clean_frame(target, *args, **kwargs)`` calls ``target`` from a frame whose
#: locals and globals hold nothing a formula could name.
in_a_clean_frame = _clean_caller()


# ------------------------------------------------------------------------------ pytensor


def compile_without_fast_math() -> None:
    """PyTensor's numba backend compiles with fast-math by default, which makes a seeded
    fit's draws depend on whether its functions were compiled in this process or loaded from
    PyTensor's on-disk cache (see ``worker.modeling.compiled``). Called before compiling."""
    from pytensor.configdefaults import config

    config.numba__fastmath = False


# --------------------------------------------------------------------------------- bambi


def new_free_variable(dist: Any, name: str) -> Any:
    """A free variable of ``dist`` named ``name`` for a model's function graph (PyMC's
    ``model_free_rv``), its value on the unconstrained space of the default transform."""
    from pymc.distributions.transforms import _default_transform
    from pymc.model.fgraph import model_free_rv

    dist.name = name
    transform = _default_transform(dist.owner.op, dist)
    unconstrained = transform.forward(dist, *dist.owner.inputs)
    value = unconstrained.type(name=f"{name}_{transform.name}__")
    return model_free_rv(dist, value, transform, name)


def clean_results(model: Any, trace: Any) -> Any:
    """Bambi's post-processing of a sampled trace, as ``Model.fit`` applies it."""
    return model.backend._clean_results(trace, omit_offsets=False, include_response_params=False)
