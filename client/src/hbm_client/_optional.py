"""The optional extras, imported only when used: pandas (``to_frame()``) and tqdm (progress
bars). Missing, they say which extra installs them."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from typing import Any


def pandas() -> Any:
    """The pandas module, or an ImportError saying how to install it."""
    try:
        import pandas
    except ImportError as exc:
        raise ImportError("to_frame() needs pandas: pip install 'hbm-client[pandas]'") from exc
    return pandas


def frame(rows: Iterable[Mapping[str, Any]], index: str | None = None) -> Any:
    """A pandas DataFrame of ``rows`` (one mapping per row), indexed by ``index``."""
    result = pandas().DataFrame.from_records(list(rows))
    return result.set_index(index) if index is not None and not result.empty else result


def tqdm() -> Any | None:
    """tqdm's class, or None with a warning saying how to install it."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        warnings.warn(
            "progress bars need tqdm: pip install 'hbm-client[progress]' "
            "(or pass progress=False); waiting without them",
            stacklevel=4,
        )
        return None
    return tqdm
