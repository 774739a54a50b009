"""`runtime.load(..., backend=...)` with a name the registry does not have, or not a name at all: a qcompile
error listing the valid names (from the registry), before anything is installed."""

from __future__ import annotations

import pytest

import runtime
from qcompiler.errors import QcompileError
from runtime.backends.registry import BACKEND_NAMES
from tests.runtime.conftest import T2V, recipe


@pytest.mark.parametrize("backend, expected", [
    ("REFERENCE", "unknown attention backend 'REFERENCE' (names are lower case: did you mean 'reference'?)"),
    ("fp9-triton", "unknown attention backend 'fp9-triton'"),
    (["reference"], "not a list (['reference'])"),
    (None, "not a NoneType (None)"),
])
def test_an_unknown_backend_is_a_qcompile_error_listing_the_names(t2v_pipe, compile_tiny, backend, expected):
    plan = compile_tiny(recipe(T2V))
    with pytest.raises(runtime.UnknownBackendError) as caught:
        runtime.load(t2v_pipe, plan, backend=backend)
    assert isinstance(caught.value, QcompileError)
    message = str(caught.value)
    assert expected in message
    assert all(repr(name) in message for name in BACKEND_NAMES)
    # Nothing was installed: the same pipeline loads with a valid name.
    with runtime.load(t2v_pipe, plan, backend="reference") as handle:
        assert handle.active
