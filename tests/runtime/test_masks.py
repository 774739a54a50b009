"""runtime/masks.py: which attention masks a mask-less quantized kernel serves exactly (padding, by packing), and
how runtime/dispatch.py's Site runs them: quantized per sample over the valid tokens, padded query rows as the
stock attention gives them, other masks by the plan's fallback policy.

Tensors are BSND as diffusers' dispatch passes them; masks in the forms the families' processors build (diffusers
0.42.1): Qwen-Image's joint key padding [B, 1, 1, Sk] bool, LTX-Video's cross-attention bias
`(1 - mask) * -10000.0` repeated per head [B, N, 1, Sk], HunyuanVideo-1.5's self-attention `m[b, i] & m[b, j]`
[B, 1, S, S] bool.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from runtime.backends.reference import ReferenceBackend
from runtime.dispatch import PLAN, ComponentState, Site
from runtime.errors import BackendUnavailableError, UnservableCallError
from runtime.masks import analyze, one_head, run_packed
from runtime.metrics import call_error
from runtime.numerics import Numerics
from runtime.step_tracker import CallContext

B, N, D = 3, 2, 64
LENGTHS = (5, 12, 9)  # valid key tokens per sample, of S_K
S_Q, S_K = 10, 12


def _qkv(seed: int = 0, s_q: int = S_Q, s_k: int = S_K, batch: int = B):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, s_q, N, D, generator=g), torch.randn(batch, s_k, N, D, generator=g),
            torch.randn(batch, s_k, N, D, generator=g))


def _key_valid(lengths=LENGTHS, s_k: int = S_K) -> torch.Tensor:
    return torch.arange(s_k)[None, :] < torch.tensor(lengths)[:, None]  # [B, Sk]


def _stock(q, k, v, mask):
    """diffusers' native backend: SDPA on BNSD ([B, Sk] is key padding)."""
    if mask.ndim == 2 and tuple(mask.shape) == (q.shape[0], k.shape[1]):
        mask = mask[:, None, None, :]
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                          attn_mask=mask).transpose(1, 2)


def _ltx_bias(valid: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """As LTXVideoTransformer3DModel.forward and LTXAttention's prepare_attention_mask build it."""
    bias = (1 - valid.to(dtype)) * -10000.0  # [B, Sk]
    return bias[:, None, None, :].repeat_interleave(N, dim=1)  # [B, N, 1, Sk]


def _stock_rows(q, k, v, mask):
    def rows(samples, idx):
        m = mask if mask.shape[0] == 1 else mask[samples]
        m = m if m.shape[2] == 1 else m[:, :, idx]
        return _stock(q[samples][:, idx], k[samples], v[samples], m)
    return rows


# -- accepted forms ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("form", ["bool_b11k", "bool_bk", "bias_ltx", "bias_inf"])
def test_key_padding_forms_give_the_valid_keys_of_each_sample(form):
    q, k, _ = _qkv()
    valid = _key_valid()
    mask = {"bool_b11k": valid[:, None, None, :], "bool_bk": valid, "bias_ltx": _ltx_bias(valid),
            "bias_inf": torch.zeros(B, 1, 1, S_K).masked_fill(~valid[:, None, None, :], -torch.inf)}[form]
    analysis = analyze(q, k, mask)
    assert analysis.packing is not None, analysis.reason
    assert torch.equal(analysis.packing.key_valid, valid)
    assert analysis.packing.query_valid.all()


def test_a_mask_broadcast_over_the_batch_serves_every_sample():
    q, k, _ = _qkv()
    valid = _key_valid()[:1]
    packing = analyze(q, k, valid[:, None, None, :]).packing
    assert packing is not None and torch.equal(packing.key_valid, valid.expand(B, S_K))
    assert len(packing.groups()) == 1 and packing.groups()[0].samples == (0, 1, 2)


def test_outer_product_self_attention_mask_gives_valid_queries_and_keys():
    q, k, _ = _qkv(s_q=S_K)
    valid = _key_valid()
    mask = valid[:, None, None, :] & valid[:, None, :, None]  # HunyuanVideo-1.5's m[b, i] & m[b, j]
    packing = analyze(q, k, mask).packing
    assert packing is not None
    assert torch.equal(packing.key_valid, valid) and torch.equal(packing.query_valid, valid)
    full = next(g for g in packing.groups() if g.samples == (1,))
    assert full.queries is None and full.keys is None and full.padded is None
    short = next(g for g in packing.groups() if g.samples == (0,))
    assert short.queries.tolist() == list(range(5)) and short.padded.tolist() == list(range(5, S_K))


def test_samples_with_equal_valid_tokens_run_together():
    q, k, _ = _qkv(batch=4)
    valid = _key_valid((5, 9, 5, 9))
    groups = analyze(q, k, valid[:, None, None, :]).packing.groups()
    assert sorted(g.samples for g in groups) == [(0, 2), (1, 3)]


# -- one head under context parallelism ------------------------------------------------------------------------

def test_one_head_lets_ltx_bias_broadcast_to_a_ranks_heads_with_the_same_output():
    """Under Ulysses 2 a rank attends with N/2 heads, but diffusers hands it LTX-Video's bias at all N heads:
    SDPA raises (stock diffusers' failure); cut to one head it broadcasts, and each head's output is the
    one-process one."""
    q, k, v = _qkv()
    bias = _ltx_bias(_key_valid())  # [B, N, 1, Sk]
    local = bias.shape[1] // 2
    with pytest.raises(RuntimeError):
        _stock(q[:, :, :local], k[:, :, :local], v[:, :, :local], bias)
    collapsed = one_head(bias)
    assert collapsed.shape == (B, 1, 1, S_K) and collapsed.is_contiguous()
    assert torch.equal(collapsed.expand_as(bias), bias)
    whole = _stock(q, k, v, bias)
    for first in range(0, N, local):
        heads = slice(first, first + local)
        assert torch.equal(_stock(q[:, :, heads], k[:, :, heads], v[:, :, heads], collapsed), whole[:, :, heads])


def test_one_head_keeps_a_mask_that_differs_between_heads_and_masks_without_heads():
    bias = _ltx_bias(_key_valid())
    bias[0, 1, 0, 0] = -5.0
    assert one_head(bias) is bias  # left to diffusers as it is (which raises under Ulysses, as stock does)
    key_padding = _key_valid()
    assert one_head(key_padding) is key_padding  # [B, Sk]: no head dimension
    single = key_padding[:, None, None, :]
    assert one_head(single) is single
    assert one_head(None) is None
    causal = torch.ones(N, S_K, S_K, dtype=torch.bool).tril()  # 3-D: SDPA reads the first dimension as heads
    assert torch.equal(one_head(causal), causal[:1])


# -- refused forms ----------------------------------------------------------------------------------------------

def test_causal_mask_is_refused():
    q, k, _ = _qkv(s_q=S_K)
    causal = torch.ones(S_K, S_K, dtype=torch.bool).tril()
    analysis = analyze(q, k, causal)
    assert analysis.packing is None and "varies per query" in analysis.reason


def test_a_mask_that_differs_between_heads_is_refused():
    q, k, _ = _qkv()
    mask = _key_valid()[:, None, None, :].repeat(1, N, 1, 1)
    mask[0, 1, 0, 0] = False
    assert analyze(q, k, mask).reason == "the mask differs between heads"


@pytest.mark.parametrize(("bias", "reason"), [
    (-1.0, "not provably an exact drop"),  # a soft penalty, not padding
    (-50.0, "not provably an exact drop"),  # exp(-50) is 2e-22, not 0
    (3.0, "raises some scores"),
])
def test_a_bias_that_does_not_provably_drop_keys_is_refused(bias, reason):
    q, k, _ = _qkv()
    mask = torch.zeros(B, 1, 1, S_K)
    mask[:, :, :, -2:] = bias
    analysis = analyze(q, k, mask)
    assert analysis.packing is None and reason in analysis.reason


def test_a_bias_of_minus_10000_is_refused_when_scores_could_reach_it():
    q, k, _ = _qkv()
    analysis = analyze(q * 200, k * 200, _ltx_bias(_key_valid()))  # |scores| up to ~2e5: -1e4 drops nothing
    assert analysis.packing is None and "not provably an exact drop" in analysis.reason


def test_more_biases_and_dtypes_are_refused():
    q, k, _ = _qkv()
    mask = torch.zeros(B, 1, 1, S_K)
    mask[:, :, :, -1] = -10000.0
    mask[:, :, :, -2] = -5.0  # two different penalties: key -2 keeps a small weight
    assert "not provably" in analyze(q, k, mask).reason
    assert "dtype" in analyze(q, k, _key_valid().to(torch.int64)).reason
    assert "does not broadcast" in analyze(q, k, torch.ones(B, 1, 1, S_K + 1, dtype=torch.bool)).reason
    assert "NaN" in analyze(q, k, torch.full((B, 1, 1, S_K), float("nan"))).reason
    # a sample none of whose keys has bias 0: its stock softmax runs over the biased keys (no row is emptied)
    assert "keeps no key with bias 0" in analyze(q, k, _ltx_bias(_key_valid((0, 12, 4)))).reason


# -- exactness of the drop --------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_stock_attention_gives_dropped_keys_exactly_zero_weight(dtype):
    """What packing relies on: with LTX-Video's -10000 bias (or -inf, or False), the stock attention's output does
    not depend on the dropped keys' values at all, bit for bit."""
    q, k, v = (t.to(dtype) for t in _qkv())
    valid = _key_valid()
    assert analyze(q, k, _ltx_bias(valid, dtype)).packing is not None
    other_v = v.masked_fill(~valid[:, :, None, None], 1e4)
    for mask in (_ltx_bias(valid, dtype), valid[:, None, None, :]):
        assert torch.equal(_stock(q, k, v, mask), _stock(q, k, other_v, mask))
    scores = torch.einsum("bqnd,bknd->bnqk", q.float(), k.float()) / D ** 0.5 + _ltx_bias(valid).float()
    weights = torch.softmax(scores, dim=-1)
    assert torch.equal(weights.masked_select(~valid[:, None, None, :].expand_as(weights)),
                       torch.zeros(int((~valid).sum()) * N * S_Q))


@pytest.mark.parametrize("form", ["bool", "minus_inf"])
def test_fully_masked_query_rows_are_what_stock_gives_zeros_on_cpu(form):
    q, k, v = _qkv(s_q=S_K)
    valid = _key_valid()
    mask = valid[:, None, None, :] & valid[:, None, :, None]
    if form == "minus_inf":
        mask = torch.zeros(mask.shape).masked_fill(~mask, -torch.inf)
    packing = analyze(q, k, mask).packing
    out = run_packed(q, k, v, packing, lambda a, b, c: _stock(a, b, c, torch.ones(1, 1, 1, 1, dtype=torch.bool)),
                     _stock_rows(q, k, v, mask))
    stock = _stock(q, k, v, mask)
    padded = ~valid
    assert torch.equal(stock[padded], torch.zeros_like(stock[padded]))  # torch 2.13 SDPA on CPU: zeros
    assert torch.equal(out[padded], stock[padded])


def test_a_sample_with_no_kept_key_is_all_stock_rows():
    q, k, v = _qkv()
    valid = _key_valid((0, 12, 4))
    mask = valid[:, None, None, :]
    packing = analyze(q, k, mask).packing
    assert packing is not None and not packing.query_valid[0].any()
    out = run_packed(q, k, v, packing, lambda a, b, c: _stock(a, b, c, torch.ones(1, 1, 1, 1, dtype=torch.bool)),
                     _stock_rows(q, k, v, mask))
    assert torch.equal(out[0], _stock(q, k, v, mask)[0])


# -- packed quantized attention ---------------------------------------------------------------------------------

@pytest.mark.parametrize("form", ["bool_b11k", "bias_ltx", "outer"])
def test_packed_quantized_output_is_the_backend_on_the_hand_packed_sequences(form):
    s_q = S_K if form == "outer" else S_Q
    q, k, v = _qkv(1, s_q=s_q)
    valid = _key_valid()
    mask = {"bool_b11k": valid[:, None, None, :], "bias_ltx": _ltx_bias(valid),
            "outer": valid[:, None, None, :] & valid[:, None, :, None]}[form]
    backend = ReferenceBackend(Numerics())
    packing = analyze(q, k, mask).packing
    out = run_packed(q, k, v, packing, lambda a, b, c: backend.attend(a, b, c, None), _stock_rows(q, k, v, mask))
    stock = _stock(q, k, v, mask)
    for b, n in enumerate(LENGTHS):
        rows = slice(0, n) if form == "outer" else slice(None)
        by_hand = backend.attend(q[b:b + 1, rows], k[b:b + 1, :n], v[b:b + 1, :n], None)
        assert torch.equal(out[b:b + 1, rows], by_hand), b
        assert call_error(out[b:b + 1, rows], stock[b:b + 1, rows]).cos_sim > 0.99
        if form == "outer":
            assert torch.equal(out[b, n:], stock[b, n:])  # padded query rows: stock (zeros)


def test_equal_samples_run_as_one_batch():
    q, k, v = _qkv(2, batch=4)
    valid = _key_valid((5, 9, 5, 9))
    mask = valid[:, None, None, :]
    backend = ReferenceBackend(Numerics())
    calls = []

    def attend(a, b, c):
        calls.append(a.shape[0])
        return backend.attend(a, b, c, None)

    out = run_packed(q, k, v, analyze(q, k, mask).packing, attend, _stock_rows(q, k, v, mask))
    assert calls == [2, 2]
    assert torch.equal(out[[0, 2]], backend.attend(q[[0, 2]], k[[0, 2], :5], v[[0, 2], :5], None))


# -- Site: plan mode, fallback policy ---------------------------------------------------------------------------

def _site(fallback: str) -> Site:
    from diffusers.models.transformers.transformer_ltx import LTXAttention

    module = LTXAttention(query_dim=N * D, heads=N, kv_heads=N, dim_head=D)
    state = ComponentState("transformer", PLAN, ReferenceBackend(Numerics()), CallContext(), fallback)
    state.context.step = 7
    site = Site("transformer", "cross", 3, module, state)
    site.fp8 = True
    return site


def _attend(site: Site, q, k, v, mask):
    return site.attend(q, k, v, mask, 0.0, False, None, False, None)


def test_site_runs_a_padding_mask_quantized_and_counts_it_packed():
    site = _site("error")
    q, k, v = _qkv()
    mask = _ltx_bias(_key_valid())
    out = _attend(site, q, k, v, mask)
    assert site.take_counts() == (0, 1, 0) and site.state.packed_calls == {"cross": 1}
    backend = site.state.backend
    assert torch.equal(out[:1], backend.attend(q[:1], k[:1, :5], v[:1, :5], None))


def test_site_refuses_a_causal_mask_by_the_error_policy():
    site = _site("error")
    q, k, v = _qkv(s_q=S_K)
    causal = torch.ones(S_K, S_K, dtype=torch.bool).tril()
    with pytest.raises(UnservableCallError, match=r"transformer / cross layer 3, step 7 .*varies per query.*"
                                                  r"fallback: native.*keep 'cross' native") as caught:
        _attend(site, q, k, v, causal)
    assert isinstance(caught.value, BackendUnavailableError)
    assert site.take_counts() == (0, 0, 0)


def test_site_runs_a_refused_mask_stock_and_counts_it_as_fallback_by_the_native_policy():
    site = _site("native")
    q, k, v = _qkv(s_q=S_K)
    causal = torch.ones(S_K, S_K, dtype=torch.bool).tril()
    out = _attend(site, q, k, v, causal)
    assert torch.equal(out, _stock(q, k, v, causal))
    assert site.take_counts() == (0, 0, 1) and not site.state.packed_calls
    assert "varies per query" in site.state.refused["cross"]


# -- the execution report ---------------------------------------------------------------------------------------

def test_packed_calls_survive_the_report_round_trip_and_add_up_over_ranks():
    from qcompiler import compile_recipe_text
    from runtime.execution_report import FP8, CellCounts, build_report, combine_reports, report_from_dict
    from tests.runtime.conftest import recipe

    plan = compile_recipe_text(recipe(steps=2), name="t.yaml", variant="tiny")
    first = plan.component_names[0]
    counts = {(c, "self"): CellCounts(2, plan.family.num_layers(c, "self")) for c in plan.component_names}
    counts[(first, "self")].row(0)[0][FP8] = 3
    report = build_report(plan, counts, {c: "reference" for c in plan.component_names}, fallback_reasons={},
                          pipeline_calls=1, observed_schedule=[first, first], quantized_backend="reference",
                          packed_calls={first: {"self": 3}})
    assert "packed: 3 quantized calls carried a padding mask" in report.format()
    again = report_from_dict(report.to_dict())
    assert again.packed_calls == {first: {"self": 3}}
    assert combine_reports([report, again]).packed_calls == {first: {"self": 6}}
