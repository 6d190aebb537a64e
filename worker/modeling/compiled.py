"""Compile once per model structure: the data and the prior parameters are inputs.

Bambi builds its PyMC model with every number baked in as a constant: the response, the
design matrices, the group indices and the prior parameters (Bambi scales its default
priors by the data). Compiling that graph for every fit costs seconds, while sampling a
typical model costs a fraction of that.

``lift`` takes Bambi's PyMC model apart (``fgraph_from_model``) and replaces these
constants by shared variables, named ``hbm_data_0``, ``hbm_data_1``, … in a fixed graph
order. What is left is the model's structure: the distributions, link, parameterization and
every integer that fixes a shape (the number of rows, of groups and of coefficients). Its
printed graph, with the dtypes and shapes of the inputs, is hashed into a structure key.
Gaussian models first have their likelihood collapsed to sufficient statistics (see
``sufficient_statistics``), whose shapes do not depend on the number of rows: a refit with
new values, rows, seed or prior parameters reuses the compiled model. Other models keep
the number of rows in the key (Bambi's graph carries static shapes downstream of the data).

``CompiledModels`` keeps compiled nutpie models by structure key. A fit whose structure
is known swaps its own inputs in with nutpie's ``with_data`` and samples straight away;
the model it samples is still exactly Bambi's (the same graph, only fed by inputs instead
of constants). Tests compare it with Bambi's own ``Model.fit``.

Models compile without numba's fast-math (PyTensor turns it on by default): a seeded fit
must draw the same bits in every process. Fast-math lets LLVM reassociate sums, contract
multiply-adds and approximate functions wherever its optimiser sees fit, so the result
depends on how the code reached nutpie's callback: compiled in this process, or loaded
from PyTensor's on-disk cache and inlined again. The seed study drew different bits in a
process that compiled with an empty cache than in one that loaded that process's
functions, every time; without fast-math LLVM keeps IEEE results and they agree (see
``tests/modeling/test_reproducibility.py``). Sampling cost, 4 chains x 2,000 iterations:
seed study 0.09 s either way, a crossed poisson model 0.56 -> 0.58 s, 300 groups with
slopes 0.94 -> 1.21 s (its sums no longer vectorise). PyTensor keys its cache by the
flag, so fast-math code is never loaded instead.
"""

from __future__ import annotations

import gc
import hashlib
import io
import logging
import re
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import bambi as bmb
import numpy as np
import nutpie
import pymc as pm
from pymc.model.fgraph import fgraph_from_model, model_from_fgraph
from pytensor.compile.sharedvalue import shared as shared_variable
from pytensor.printing import debugprint
from pytensor.tensor.sharedvar import TensorSharedVariable
from pytensor.tensor.variable import TensorConstant

from worker.modeling.parameterization import centre_on_intercept
from worker.modeling.shared_inputs import straight_line_readers
from worker.modeling.sufficient_statistics import collapse
from worker.patches import compile_without_fast_math

log = logging.getLogger(__name__)

INPUT_PREFIX = "hbm_data_"
#: An object's address in a printed graph: not part of the structure.
ADDRESS = re.compile(r" object at 0x[0-9a-fA-F]+")


@dataclass
class LiftedModel:
    """Bambi's PyMC model with its numbers lifted into named inputs."""

    model: pm.Model
    key: str
    inputs: dict[str, np.ndarray]
    likelihood: str = "row_wise"  # or "sufficient_statistics"


@dataclass
class CompiledEntry:
    """A compiled model and the shared variables its initial-point function reads."""

    compiled: nutpie.compile_pymc.CompiledPyMCModel
    shared: dict[str, TensorSharedVariable]


def _is_input(value: np.ndarray, n_rows: int) -> bool:
    """Floats of any shape (data, prior parameters) and anything that runs over the rows
    (group indices, integer responses, trials). Other integers fix shapes: structure."""
    return value.dtype.kind == "f" or (value.ndim >= 1 and value.shape[0] == n_rows)


def lift(model: bmb.Model, centre_on: str | None = None) -> LiftedModel:
    """Bambi's built PyMC model, with data and prior parameters as inputs, and its key.

    ``centre_on`` names a centred group intercept to sample centred on the common intercept
    (see ``parameterization``)."""
    n_rows = len(model.data)
    graph, _ = fgraph_from_model(model.backend.model, inlined_views=True)
    if centre_on is not None and model.noncentered is False:
        centre_on_intercept(graph, centre_on)
    not_collapsed = collapse(graph, model)
    if not_collapsed is not None:
        log.info("row-wise likelihood: %s", not_collapsed)
    likelihood = "row_wise" if not_collapsed else "sufficient_statistics"
    found: dict[TensorConstant[Any], None] = {}  # insertion-ordered: graph order fixes the names
    for node in graph.toposort():
        for var in node.inputs:
            if isinstance(var, TensorConstant) and _is_input(np.asarray(var.data), n_rows):
                found.setdefault(var)
    inputs: dict[str, np.ndarray] = {}
    signature = []
    replacements = []
    for i, constant in enumerate(found):
        name = f"{INPUT_PREFIX}{i}"
        value = np.asarray(constant.data)
        variable = shared_variable(value, name=name, shape=value.shape)  # type: ignore[no-untyped-call]
        replacements.append((constant, variable))
        inputs[name] = value
        signature.append((name, str(value.dtype), value.shape))
    graph.replace_all(replacements, import_missing=True)
    printed = io.StringIO()
    debugprint(graph, file=printed, print_type=True)
    # Ops print their transforms with their addresses (``<...LogTransform object at 0x…>``);
    # a transform made anew for each model (the LKJ factor's, see ``correlated``) would
    # otherwise give every fit a structure of its own.
    text = ADDRESS.sub(" object", printed.getvalue())
    key = hashlib.sha256(f"{text}\n{signature!r}".encode()).hexdigest()
    return LiftedModel(model_from_fgraph(graph, mutate_fgraph=True), key, inputs, likelihood)


def derived(lifted: LiftedModel, name: str) -> np.ndarray:
    """The value of one of nutpie's shared variables for ``lifted``: an input, or a
    deterministic that depends on inputs alone (a group SD that a ``Constant`` prior fixes),
    which nutpie computed once when it compiled. Left as compiled, a fit that fixed the SD
    at 2 sampled with 2 and reported the 1 of the fit that compiled the model."""
    if name in lifted.inputs:
        return lifted.inputs[name]
    return np.asarray(lifted.model[name].eval())


class CompiledModels:
    """The ``size`` most recently used compiled models of one process, by structure key."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[str, CompiledEntry] = OrderedDict()

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def get(
        self, lifted: LiftedModel, var_names: Iterable[str]
    ) -> tuple[nutpie.compile_pymc.CompiledPyMCModel, bool]:
        """A compiled model fed with ``lifted``'s inputs, and whether it was compiled now."""
        entry = self._items.get(lifted.key)
        if entry is None:
            compile_without_fast_math()  # see the module docstring
            with straight_line_readers():
                compiled = nutpie.compile_pymc_model(lifted.model, var_names=list(var_names))
            shared = {var.name: var for var in compiled.shared_var_keys}
            self._items[lifted.key] = CompiledEntry(compiled, shared)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
                gc.unfreeze()  # the dropped model may sit in a frozen cycle (see tasks.run_fit)
            return compiled, True
        self._items.move_to_end(lifted.key)
        used = {name: derived(lifted, name) for name in entry.shared}
        for name, value in used.items():
            # The initial point (the priors' support points) is computed from these.
            entry.shared[name].set_value(value)  # type: ignore[no-untyped-call]
        log.info("reusing the compiled model %s", lifted.key[:12])
        return entry.compiled.with_data(**used), False
