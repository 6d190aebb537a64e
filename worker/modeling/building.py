"""Build a Bambi model from a validated spec (never from a pickle)."""

from __future__ import annotations

import bambi as bmb
import numpy as np
import pandas as pd

from service.core.errors import FitFailed
from service.core.formula import check_formula
from service.core.schemas import FitSpec, Scalar

#: Functions the allow-listed formula calls resolve to, beyond Bambi's own namespace.
EXTRA_NAMESPACE = {"sqrt": np.sqrt}


def frame(columns: dict[str, list[Scalar]]) -> pd.DataFrame:
    """The data as a DataFrame, one column per entry."""
    return pd.DataFrame(columns)


def build_model(spec: FitSpec) -> bmb.Model:
    """A Bambi model for ``spec``. The formula is checked again before Bambi sees it."""
    check_formula(spec.formula, spec.columns, max_length=len(spec.formula))
    try:
        return bmb.Model(
            spec.formula,
            frame(spec.columns),
            family=spec.family,
            noncentered=spec.sampler.parameterization == "noncentered",
            extra_namespace=EXTRA_NAMESPACE,
        )
    except Exception as exc:
        raise FitFailed(
            "model_error",
            f"the model could not be built from this formula and data ({type(exc).__name__})",
        ) from exc
