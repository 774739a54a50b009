"""The processor entry (runtime/processor_entry.py) on a toy model: one diffusers `Attention` module with the
generic `AttnProcessor2_0` (what HunyuanVideo-1.5's token refiner runs), and an SDPA call of the model's own
outside it. The installer picks the entry by processor; a native site is bit-identical to stock (with a mask
too), a quantized site runs the backend on the processor's Q, K, V, only the attention module's SDPA call is
served, an exception mid-forward leaves nothing behind, and a quantized processor site under context
parallelism is refused."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0

from runtime.backends.reference import ReferenceBackend
from runtime.dispatch import PLAN, ComponentState, Site
from runtime.errors import ParallelLayoutError, PlanMismatchError
from runtime.hooks import ComponentHook
from runtime.install import attention_module
from runtime.models.base import DISPATCHER, PROCESSOR
from runtime.numerics import Numerics
from runtime.processor_entry import install_entry, sdpa_stock_backend
from runtime.step_tracker import CallContext

HEADS, HEAD_DIM, TOKENS = 2, 64, 12
DIM = HEADS * HEAD_DIM


class Toy(torch.nn.Module):
    """An attention module, then an SDPA call of the model's own over the attention output."""

    def __init__(self, processor=None):
        super().__init__()
        self.attn = Attention(query_dim=DIM, heads=HEADS, dim_head=HEAD_DIM, processor=processor or AttnProcessor2_0())

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.attn(x, attention_mask=mask)
        heads = y.view(y.shape[0], -1, HEADS, HEAD_DIM).transpose(1, 2)
        return y, F.scaled_dot_product_attention(heads, heads, heads)


@pytest.fixture
def toy():
    torch.manual_seed(0)
    return Toy().eval(), torch.randn(2, TOKENS, DIM)


def _site(model: Toy, backend=None) -> tuple[Site, callable]:
    module, entry = attention_module(model, "transformer", "refiner", "attn")
    assert module is model.attn and entry == PROCESSOR
    state = ComponentState("transformer", PLAN, backend, CallContext())
    site = Site("transformer", "refiner", 0, module, state, stock_backend=sdpa_stock_backend())
    return site, install_entry(site)


def test_the_installer_picks_the_entry_by_processor_and_refuses_one_it_cannot_reach():
    model = Toy()
    assert attention_module(model, "transformer", "refiner", "attn")[1] == PROCESSOR
    model.attn.processor._attention_backend = None  # what a dispatching processor has
    assert attention_module(model, "transformer", "refiner", "attn")[1] == PROCESSOR  # known SDPA class first
    model = Toy(AttnProcessor())  # computes attention with baddbmm: no entry reaches it
    with pytest.raises(PlanMismatchError, match=r"transformer\.attn \(refiner attention\) has the attention "
                                                r"processor AttnProcessor, which qcompile cannot reach"):
        attention_module(model, "transformer", "refiner", "attn")
    from diffusers.models.transformers.transformer_flux import FluxAttnProcessor

    model.attn.set_processor(FluxAttnProcessor())
    assert attention_module(model, "transformer", "refiner", "attn")[1] == DISPATCHER


def test_native_site_is_bit_identical_to_stock_with_and_without_a_mask(toy):
    model, x = toy
    mask = torch.ones(2, TOKENS, dtype=torch.bool)
    mask[1, 7:] = False  # the second sample's last tokens are padding
    with torch.no_grad():
        stock = [model(x), model(x, mask)]
        site, undo = _site(model, ReferenceBackend(Numerics()))
        try:
            ours = [model(x), model(x, mask)]
        finally:
            undo()
        after = [model(x), model(x, mask)]
    for a, b, c in zip(stock, ours, after, strict=True):
        assert all(torch.equal(s, o) for s, o in zip(a, b, strict=True))
        assert all(torch.equal(s, o) for s, o in zip(a, c, strict=True))
    assert site.take_counts() == (2, 0, 0)  # both attention calls reached the site; the model's own SDPA did not
    assert not model.attn._forward_hooks and not model.attn._forward_pre_hooks


def test_quantized_site_runs_the_backend_on_the_processors_qkv(toy):
    model, x = toy
    backend = ReferenceBackend(Numerics())
    attn = model.attn
    with torch.no_grad():
        _, own_stock = model(x)
        q, k, v = (proj(x).view(2, TOKENS, HEADS, HEAD_DIM) for proj in (attn.to_q, attn.to_k, attn.to_v))
        expected = attn.to_out[0](backend.attend(q, k, v, None).reshape(2, TOKENS, DIM))
        site, undo = _site(model, backend)
        site.fp8 = True
        try:
            out, own = model(x)
        finally:
            undo()
    assert torch.equal(out, expected)
    assert site.take_counts() == (0, 1, 0)
    # the model's own SDPA, outside the attention module, ran stock on the quantized attention's output
    heads = out.view(2, TOKENS, HEADS, HEAD_DIM).transpose(1, 2)
    assert torch.equal(own, F.scaled_dot_product_attention(heads, heads, heads))
    assert not torch.equal(own, own_stock)


def test_an_exception_mid_forward_leaves_no_entry_behind(toy):
    model, x = toy
    site, undo = _site(model, ReferenceBackend(Numerics()))
    site.fp8 = True

    def fail(*_):
        raise RuntimeError("boom")

    handle = model.attn.to_out[0].register_forward_pre_hook(fail)  # after the processor's SDPA call
    try:
        with torch.no_grad(), pytest.raises(RuntimeError, match="boom"):
            model(x)
        assert site.take_counts() == (0, 1, 0)
        q = torch.randn(1, HEADS, TOKENS, HEAD_DIM)
        F.scaled_dot_product_attention(q, q, q)  # a mode left pushed would send this to the site
        assert site.take_counts() == (0, 0, 0)
        handle.remove()
        with torch.no_grad():
            model(x)
        assert site.take_counts() == (0, 1, 0)
    finally:
        handle.remove()
        undo()


def test_a_quantized_processor_site_under_context_parallelism_is_refused(toy, monkeypatch):
    from diffusers import ContextParallelConfig
    from diffusers.models._modeling_parallel import ParallelConfig

    model, _ = toy
    # a model diffusers can shard (a class without `_cp_plan` is refused before any site is looked at)
    monkeypatch.setattr(type(model), "_cp_plan", {"": {}}, raising=False)
    state = ComponentState("transformer", PLAN, ReferenceBackend(Numerics()), CallContext())
    site = Site("transformer", "refiner", 0, model.attn, state, stock_backend=sdpa_stock_backend())
    model._parallel_config = ParallelConfig(context_parallel_config=ContextParallelConfig(ulysses_degree=2))

    def hook(rows, needs_quantized=True):
        return ComponentHook(model, state, {"refiner": [site]}, rows, None, None, None, needs_quantized)

    with pytest.raises(ParallelLayoutError, match=r"its refiner attention is called by processors that call "
                                                  r"F\.scaled_dot_product_attention themselves \(AttnProcessor2_0\)"):
        hook({"refiner": ((True,),)}).check_layout()
    hook({"refiner": ((False,),)}).check_layout()  # native cells replay the stock call: nothing to refuse
    hook({"refiner": ((True,),)}, needs_quantized=False).check_layout()  # no backend serves it: all native


def test_a_keyboard_interrupt_mid_forward_leaves_no_entry_serving(toy):
    """torch runs always-called forward hooks for an Exception only: a KeyboardInterrupt leaves the mode pushed,
    and the next attention forward of the thread drops it (its call is served once, by its own mode)."""
    model, x = toy
    site, undo = _site(model, ReferenceBackend(Numerics()))

    def interrupt(*_):
        raise KeyboardInterrupt

    handle = model.attn.to_out[0].register_forward_pre_hook(interrupt)
    try:
        with torch.no_grad(), pytest.raises(KeyboardInterrupt):
            model(x)
        handle.remove()
        assert site.take_counts() == (1, 0, 0)
        with torch.no_grad():
            stock_free, _ = model(x)
        assert site.take_counts() == (1, 0, 0)
        q = torch.randn(1, HEADS, TOKENS, HEAD_DIM)
        F.scaled_dot_product_attention(q, q, q)
        assert site.take_counts() == (0, 0, 0)
    finally:
        handle.remove()
        undo()
    with torch.no_grad():
        assert torch.equal(model(x)[0], stock_free)


def test_the_self_check_names_an_sdpa_processor_that_moved(monkeypatch):
    """The processor entry relies on each listed class making exactly one F.scaled_dot_product_attention call of
    its own: the private-API self-check says when a diffusers upgrade changes that (AttnProcessor computes
    attention with baddbmm; NoSuchProcessor does not exist)."""
    from runtime import diffusers_private

    assert diffusers_private.check_private_api() == []
    monkeypatch.setattr(diffusers_private, "SDPA_PROCESSOR_CLASSES",
                        (*diffusers_private.SDPA_PROCESSOR_CLASSES, "AttnProcessor", "NoSuchProcessor"))
    assert diffusers_private.check_private_api() == [
        "AttnProcessor.__call__ no longer makes exactly one F.scaled_dot_product_attention(...) call of its own",
        "diffusers.models.attention_processor.NoSuchProcessor is gone",
    ]


def test_the_self_check_names_a_processor_whose_calls_per_forward_changed(monkeypatch):
    """Each listed class says how often one forward calls SDPA (diffusers_private.SDPA_PROCESSOR_CALLS): once, or
    once per sample in a `for ... in range(batch_size)` loop (Mochi's). The self-check reads the source and says when
    a class no longer does what it is listed for: here the generic processor listed as per-sample, Mochi's as one
    call per forward."""
    from runtime import diffusers_private

    calls = diffusers_private.SDPA_PROCESSOR_CALLS
    assert calls["MochiAttnProcessor2_0"] == diffusers_private.PER_SAMPLE
    assert {calls[n] for n in diffusers_private.SDPA_PROCESSOR_CLASSES if n != "MochiAttnProcessor2_0"} == {
        diffusers_private.ONE_CALL}
    monkeypatch.setitem(calls, "AttnProcessor2_0", diffusers_private.PER_SAMPLE)
    monkeypatch.setitem(calls, "MochiAttnProcessor2_0", diffusers_private.ONE_CALL)
    assert diffusers_private.check_private_api() == [
        "AttnProcessor2_0.__call__ no longer makes its F.scaled_dot_product_attention(...) call once per sample "
        "(inside a `for ... in range(batch_size)` loop)",
        "MochiAttnProcessor2_0.__call__ now makes its F.scaled_dot_product_attention(...) call in a loop, not once "
        "per forward",
    ]
