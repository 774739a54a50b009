"""Attention masks a mask-less quantized kernel can serve exactly: padding masks, run by packing.

A quantized kernel (runtime/backends) takes no mask. A call whose mask only says "these tokens are padding" is
served exactly by running the kernel, per batch sample, on the valid tokens alone (`Packing`): dropping a key the
stock attention gives exactly zero weight changes nothing, and a query row that attends no key at all (a padded
query of an outer-product mask) is left to the stock attention, which alone defines what such a row holds (on
CPU, torch 2.13's SDPA writes zeros there, for boolean and -inf masks alike).

`analyze(query, key, attn_mask, scale)` (BSND tensors, the mask as diffusers' processors pass it to
`dispatch_attention_fn`) accepts:
- a boolean mask (True = attend) broadcastable to [B, N, Sq, Sk], the same for every head, that is the outer
  product of a per-sample query mask and key mask: key padding ([B, Sk], [B, 1, 1, Sk]: Qwen-Image's joint
  attention with unequal prompts) and the self-attention padding mask `m[b, i] & m[b, j]` (HunyuanVideo-1.5's
  blocks and token refiner, [B, 1, S, S]);
- an additive float mask of the same structure whose values are 0 for kept keys and, for dropped keys, -inf or a
  finite negative bias that provably underflows (LTX-Video's cross-attention: `(1 - mask) * -10000.0` in the
  hidden dtype, repeated per head, [B, N, 1, Sk]).
It refuses (with a reason) a mask that varies per head, a per-query pattern that is not padding (causal, sliding
window, block sparse), bias values other than 0 and a dropping value, a finite bias not provably dropping, and a
query row with no zero-bias key but finite biases (its stock softmax runs over the biased keys).

Why a finite bias is dropped exactly: SDPA computes softmax(s + b) as exp(s_j + b_j - m) / sum, with m the row
max, in fp32 or wider (half-precision kernels accumulate the softmax in fp32). For a valid query row m is at
least the score of a kept key (bias 0), and |s_ij| <= scale * |q_i| * |k_j| (Cauchy-Schwarz). So for a dropped key
j, s_j + b_j - m <= b_j + bound with bound = scale * max_i |q_i| * (max_dropped |k_j| + min_kept |k|), taken over
the sample's valid queries and every head. exp(x) is exactly 0 in fp32 for x below ln(2^-150) = -103.97 (half
the smallest subnormal; flush-to-zero exps underflow even earlier). We require -b_j - bound >= 2 * 103.97 (for
float64 data: 2 * 745.13): the factor 2 covers the rounding of s_j + b_j - m in bf16/fp16 (relative error below
2^-7), so the computed exponent is still far below the underflow point. LTX-Video's -10000 passes for any bound up
to 9792 (its QK RMS-norm keeps the tiny pipeline's far below); a call whose bound is larger is refused, not guessed.

`one_head(attn_mask)`: under Ulysses, a mask the same on every head cut to one head, so that it broadcasts to the
rank's H/N heads (runtime/dispatch.py applies it to every masked call with a `parallel_config`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

# exp(x) rounds to exactly 0 below ln(smallest subnormal / 2) of the softmax's compute dtype (fp32 for fp32,
# bf16 and fp16 inputs, whose kernels accumulate the softmax in fp32).
_UNDERFLOW = {torch.float32: 150 * math.log(2.0), torch.float64: 1075 * math.log(2.0)}
# Margin over the underflow point for the rounding of the biased score in the compute dtype (module docstring).
_MARGIN = 2.0


@dataclass(frozen=True)
class PackGroup:
    """Batch samples with the same valid tokens, run together: `queries`/`keys` are the valid token indices
    (None: all of them), `padded` the query rows that attend no key (None: none)."""

    samples: tuple[int, ...]
    queries: torch.Tensor | None
    keys: torch.Tensor | None
    padded: torch.Tensor | None


@dataclass(frozen=True)
class Packing:
    """A padding mask: per batch sample, which query rows attend any key and which keys they attend (CPU bools)."""

    query_valid: torch.Tensor  # [B, Sq]
    key_valid: torch.Tensor  # [B, Sk]

    def groups(self) -> list[PackGroup]:
        by_pattern: dict[tuple[bytes, bytes], list[int]] = {}
        for b in range(self.query_valid.shape[0]):
            pattern = (self.query_valid[b].numpy().tobytes(), self.key_valid[b].numpy().tobytes())
            by_pattern.setdefault(pattern, []).append(b)
        groups = []
        for samples in by_pattern.values():
            q, k = self.query_valid[samples[0]], self.key_valid[samples[0]]
            groups.append(PackGroup(tuple(samples), _indices(q), _indices(k),
                                    None if q.all() else torch.nonzero(~q).flatten()))
        return groups


@dataclass(frozen=True)
class MaskAnalysis:
    """`packing` when the mask is a padding mask served exactly by packing, else None and `reason` says why."""

    packing: Packing | None
    reason: str = ""


def _indices(valid: torch.Tensor) -> torch.Tensor | None:
    return None if valid.all() else torch.nonzero(valid).flatten()


def _refuse(reason: str) -> MaskAnalysis:
    return MaskAnalysis(None, reason)


def as_4d(attn_mask: torch.Tensor, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """The mask as SDPA broadcasts it against [B, N, Sq, Sk]; a [B, Sk] mask is key padding, as diffusers' native
    backend reads it."""
    batch, kv_len = query.shape[0], key.shape[1]
    if attn_mask.ndim == 2 and tuple(attn_mask.shape) == (batch, kv_len):
        return attn_mask[:, None, None, :]
    return attn_mask.reshape((1,) * (4 - attn_mask.ndim) + tuple(attn_mask.shape))


def one_head(attn_mask: Any) -> Any:
    """`attn_mask` with its head dimension cut to one head when every head holds the same mask, else as it is.

    For context parallelism: after diffusers' Ulysses all-to-all each rank attends with H/N heads, and diffusers
    0.42.1 all-gathers a rank's mask along the keys only, leaving a mask built for all H heads (LTX-Video's
    cross-attention bias, `prepare_attention_mask` repeated per head, [B, H, 1, Sk]) that SDPA cannot broadcast
    to H/N heads. One head broadcasts to any head count and gives every head the same values: exact. A mask that
    differs per head is returned as it is (SDPA then raises as in stock diffusers: which heads a rank holds is
    diffusers' layout, not the mask's)."""
    if not isinstance(attn_mask, torch.Tensor) or attn_mask.ndim < 3:
        return attn_mask
    heads = attn_mask.ndim - 3  # SDPA aligns a mask's dimensions right: [..., N, Sq, Sk]
    if attn_mask.shape[heads] == 1:
        return attn_mask
    first = attn_mask.narrow(heads, 0, 1)
    if not torch.equal(attn_mask, first.expand_as(attn_mask)):
        return attn_mask
    return first.contiguous()  # contiguous: diffusers all-gathers it (gloo and NCCL take dense tensors only)


def analyze(query: torch.Tensor, key: torch.Tensor, attn_mask: torch.Tensor, scale: float | None = None
            ) -> MaskAnalysis:
    """Whether `attn_mask` (as passed with BSND `query`/`key` to diffusers' dispatch) is a padding mask that
    packing serves exactly; see the module docstring for the accepted forms and why a finite bias is exact."""
    if not isinstance(attn_mask, torch.Tensor):
        return _refuse(f"the mask is a {type(attn_mask).__name__}, not a tensor")
    if attn_mask.ndim > 4:
        return _refuse(f"the mask has {attn_mask.ndim} dimensions (SDPA takes at most 4)")
    batch, q_len, heads, _ = query.shape
    kv_len = key.shape[1]
    mask = as_4d(attn_mask, query, key)
    target = (batch, heads, q_len, kv_len)
    if any(m not in (1, t) for m, t in zip(mask.shape, target, strict=True)):
        return _refuse(f"mask shape {tuple(attn_mask.shape)} does not broadcast to [B, N, Sq, Sk] = {list(target)}")
    if mask.shape[1] > 1 and not bool((mask == mask[:, :1]).all()):
        return _refuse("the mask differs between heads")
    mask = mask[:, 0]  # [b, sq, Sk], b in {1, B}, sq in {1, Sq}
    if mask.dtype == torch.bool:
        keep = mask
    elif mask.is_floating_point():
        if bool(torch.isnan(mask).any()):
            return _refuse("the additive mask holds NaN")
        keep = mask == 0
        if bool((mask[~keep] > 0).any()):
            return _refuse("the additive mask raises some scores (a positive bias is not padding)")
    else:
        return _refuse(f"the mask's dtype is {mask.dtype} (SDPA takes bool or a float bias)")
    key_valid = keep.any(dim=1)  # [b, Sk]: kept for some query
    query_valid = keep.any(dim=2)  # [b, sq]: attends some key
    if not bool((keep == (query_valid[:, :, None] & key_valid[:, None, :])).all()):
        return _refuse("the mask varies per query in a way padding does not (causal, windowed or block-sparse)")
    if mask.dtype != torch.bool:
        if bool(torch.isfinite(mask[~query_valid.expand(mask.shape[:2])]).any()):
            # such a row's softmax runs over the biased keys: real attention, not a row the mask empties
            return _refuse("a query row keeps no key with bias 0 but has finite biases (a softmax over the biased "
                           "keys, not padding)")
        reason = _bias_not_dropping(query, key, mask, keep, query_valid, key_valid, scale)
        if reason:
            return _refuse(reason)
    query_valid = query_valid.expand(batch, q_len).cpu()
    key_valid = key_valid.expand(batch, kv_len).cpu()
    return MaskAnalysis(Packing(query_valid, key_valid))


def _bias_not_dropping(query: torch.Tensor, key: torch.Tensor, bias: torch.Tensor, keep: torch.Tensor,
                       query_valid: torch.Tensor, key_valid: torch.Tensor, scale: float | None) -> str:
    """Why a finite negative bias is not provably an exact drop (empty: it is), per the module docstring."""
    batch, q_len = query.shape[0], query.shape[1]
    finite_drop = ~keep & torch.isfinite(bias) & query_valid[:, :, None]  # -inf drops exactly by itself
    if not bool(finite_drop.any()):
        return ""
    compute = torch.float64 if query.dtype == torch.float64 or bias.dtype == torch.float64 else torch.float32
    underflow = _UNDERFLOW[compute]
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    q_norm = query.detach().to(compute).norm(dim=-1)  # [B, Sq, N]
    k_norm = key.detach().to(compute).norm(dim=-1)  # [B, Sk, N]
    if not (bool(torch.isfinite(q_norm).all()) and bool(torch.isfinite(k_norm).all())):
        return "a finite bias cannot be proven to drop keys: the query or key holds inf/NaN"
    q_valid = query_valid.expand(batch, q_len)
    k_valid = key_valid.expand(batch, key.shape[1])
    worst = bias.masked_fill(~finite_drop, -math.inf).to(compute).amax(dim=(1, 2)).expand(batch)  # [B]
    for b in range(batch):
        if worst[b] == -math.inf:
            continue
        dropped = ~k_valid[b]
        q_max = q_norm[b][q_valid[b]].amax(dim=0)  # [N]
        bound = scale * q_max * (k_norm[b][dropped].amax(dim=0) + k_norm[b][k_valid[b]].amin(dim=0))
        margin = -float(worst[b]) - float(bound.amax())
        if margin < _MARGIN * underflow:
            return (f"the additive mask's bias {float(worst[b]):.6g} (sample {b}) is not provably an exact drop: "
                    f"scores reach {float(bound.amax()):.6g} and exp must underflow to 0 in {compute} "
                    f"(bias + score bound <= -{_MARGIN * underflow:.6g})")
    return ""


def run_packed(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, packing: Packing,
               attend: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
               stock_rows: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """The masked attention of BSND tensors by a mask-less `attend(q, k, v)`: per group of samples with the same
    valid tokens, `attend` on the valid queries and keys only; the padded query rows (no key kept) from
    `stock_rows(samples, rows)`, the stock masked attention of those rows. Every output row is written."""
    batch, q_len, heads, _ = query.shape
    groups = packing.groups()
    out: torch.Tensor | None = None

    def place(samples: torch.Tensor, rows: torch.Tensor | None, part: torch.Tensor) -> None:
        nonlocal out
        if out is None:
            out = part.new_empty((batch, q_len, heads, part.shape[-1]))
        if rows is None:
            out[samples] = part
        else:
            out[samples[:, None], rows[None, :]] = part

    for group in groups:
        samples = torch.tensor(group.samples, device=query.device)
        keys = None if group.keys is None else group.keys.to(query.device)
        queries = None if group.queries is None else group.queries.to(query.device)
        if queries is None or queries.numel():
            whole = len(group.samples) == batch
            q = query if whole else query[samples]
            k = key if whole else key[samples]
            v = value if whole else value[samples]
            if queries is not None:
                q = q[:, queries]
            if keys is not None:
                k, v = k[:, keys], v[:, keys]
            place(samples, queries, attend(q, k, v))
        if group.padded is not None:
            padded = group.padded.to(query.device)
            place(samples, padded, stock_rows(samples, padded))
    return out
