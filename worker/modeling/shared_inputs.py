"""How compiled models read their shared inputs: nutpie's reader, without its compile cost.

nutpie (0.16) compiles a model's logp and expansion functions as C callbacks that find the
shared inputs (our lifted data and prior parameters, see ``compiled``) through a pointer to
a record of data pointers and shapes. Its reader walks the inputs with numba's
``literal_unroll``, whose loop versioning made compiling a lifted model take 3-5 times as
long as compiling Bambi's constant graph (seed study: 10.7-12.0 s against 3.1-4.4 s with
the reader here, in the same process state).

``straight_line_readers`` replaces nutpie's ``make_extraction_fn`` while a model compiles
with a reader that does the same thing written out: one small function per input that
wraps its pointer in an array of the recorded shape, and one call of the model's function
with all of them. The code is generated from the inputs' count, ranks and dtypes only
(never from request text). Tests check that both readers give identical draws.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numba
import numpy as np
from nutpie import compile_pymc


def _reader_source(index: int, ndim: int) -> str:
    """A numba function returning input ``index`` as an array of rank ``ndim``."""
    if ndim == 0:
        array = f"numba.carray(pointer, 1, DTYPE_{index}).reshape(())"
    else:
        shape = ", ".join(f"int(shape[{d}])" for d in range(ndim))
        array = f"numba.carray(pointer, ({shape},), DTYPE_{index})"
    return (
        f"def read_{index}(shared):\n"
        f"    pointer = address_as_void_pointer(shared['data'][KEY_{index}][()])\n"
        f"    shape = shared['shape'][KEY_{index}]\n"
        f"    return {array}\n"
    )


def make_extraction_fn(
    inner: Any, shared_data: dict[str, np.ndarray], shared_var_keys: Any, record_dtype: Any
) -> Any:
    """nutpie's ``make_extraction_fn``, written out: ``extract(x, user_data)`` calls
    ``inner(x, *inputs)`` with every shared input read from the user-data record."""
    keys = list(shared_var_keys)
    if not keys:
        return ORIGINAL(inner, shared_data, shared_var_keys, record_dtype)
    namespace: dict[str, Any] = {
        "numba": numba,
        "address_as_void_pointer": compile_pymc.address_as_void_pointer,
        "inner": inner,
        "RECORD": record_dtype,
    }
    for i, key in enumerate(keys):
        namespace[f"KEY_{i}"] = key
        namespace[f"DTYPE_{i}"] = np.dtype(shared_data[key].dtype)
        exec(_reader_source(i, shared_data[key].ndim), namespace)
        namespace[f"read_{i}"] = numba.njit(inline="always")(namespace[f"read_{i}"])
    calls = ", ".join(f"read_{i}(shared)" for i in range(len(keys)))
    exec(  # our own code, from counts and ranks only
        "def extract_shared(x, user_data):\n"
        "    shared = numba.carray(user_data, (), RECORD)['shared']\n"
        f"    return inner(x, {calls})\n",
        namespace,
    )
    return numba.njit(inline="always")(namespace["extract_shared"])


ORIGINAL = compile_pymc.make_extraction_fn


@contextmanager
def straight_line_readers() -> Iterator[None]:
    """Within the block, nutpie compiles models with the reader above."""
    compile_pymc.make_extraction_fn = make_extraction_fn
    try:
        yield
    finally:
        compile_pymc.make_extraction_fn = ORIGINAL
