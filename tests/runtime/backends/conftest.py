"""A made-up backend, written as its own module the way a new backend is added, registered for one test."""

from __future__ import annotations

import importlib
import sys
import textwrap

import pytest

from runtime.backends.registry import unregister_backend

MADE_UP_MODULE = '''
"""A backend that exists only in tests: FP8 and MXFP8 at head dims 64 and 96, tried first by `auto`."""

import torch.nn.functional as F

from qcompiler.backend_table import HeadDims
from runtime.backends.base import QuantizedBackend
from runtime.backends.registry import register_backend


@register_backend(
    "made-up", aliases=("made-up-alias",), auto_order=5, devices=("cpu",),
    dtypes=("fp8_e4m3_per_block", "mxfp8_e4m3"), head_dims=HeadDims(exactly=(64, 96)), pv_precisions=("e4m3",),
    summary="a backend made up by the tests",
)
class MadeUpBackend(QuantizedBackend):
    missing = "made-up's library is not installed"  # the tests set None to make it available
    calls = 0

    def unavailable_reason(self):
        return type(self).missing

    def attend(self, query, key, value, rotation):
        self.check_inputs(query, key, value)
        type(self).calls += 1
        out = F.scaled_dot_product_attention(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2))
        return out.transpose(1, 2)
'''


@pytest.fixture
def made_up(tmp_path, monkeypatch):
    """The made-up backend's module, imported (so registered) for the test and unregistered after it."""
    (tmp_path / "made_up_backend.py").write_text(textwrap.dedent(MADE_UP_MODULE), encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        yield importlib.import_module("made_up_backend")
    finally:
        unregister_backend("made-up")
        sys.modules.pop("made_up_backend", None)
