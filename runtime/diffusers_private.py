"""Every private diffusers API qcompile relies on, named in one place (diffusers 0.42.1).

diffusers has no public way to add an attention backend (`AttentionBackendName` is a closed str Enum and the
registry is keyed on it) and no public way to run a custom attention op inside its context-parallel
all-to-all. Everything here may move in a diffusers upgrade; `check_private_api()` says what moved, and
tests/runtime/test_diffusers_private.py fails with its message.

What we rely on:
- `AttentionBackendName` member maps (`_member_map_`, `_value2member_map_`, `_member_names_`): adding a member.
- `_AttentionBackendRegistry.register(backend, constraints, supports_context_parallel)` (registration),
  `_backends / _supported_arg_names / _active_backend / _checks_enabled` and `attention_dispatch._CAN_USE_FLEX_ATTN`
  (what dispatch does per call).
- `_templated_context_parallel_attention(q, k, v, ..., forward_op=, backward_op=, _parallel_config=)` and the
  forward-op signature `(ctx, q, k, v, attn_mask, dropout_p, is_causal, scale, enable_gqa, return_lse,
  _save_ctx, _parallel_config)`.
- attention processors' `_attention_backend` and `_parallel_config` attributes, and the model's
  `_parallel_config` (set by `enable_parallelism`), with `context_parallel_config.ring_degree / ulysses_degree /
  ulysses_anything` and its meshes `_flattened_mesh` / `_ulysses_mesh`.
- a pipeline's `_current_timestep` (set inside its denoising loop) and a compiled block's `_compiled_call_impl`
  (torch's, set by `nn.Module.compile()`, which diffusers' `compile_repeated_blocks` calls).
- the processor classes that call `F.scaled_dot_product_attention` themselves instead of the dispatch
  (`SDPA_PROCESSOR_CALLS` in `diffusers.models.attention_processor`, once per forward or once per sample in a loop
  over the batch; runtime/processor_entry.py serves them),
  and torch's `torch._C._nn.scaled_dot_product_attention` (what `F.scaled_dot_product_attention` is) and
  `torch.overrides._get_current_function_mode`, which that entry uses.
"""

from __future__ import annotations

import ast
import functools
import inspect
import textwrap
from collections.abc import Callable
from typing import Any

import torch
from diffusers.models import attention_dispatch

AttentionBackendName = attention_dispatch.AttentionBackendName
dispatch_attention_fn = attention_dispatch.dispatch_attention_fn

# What the rest of the runtime reads; a diffusers upgrade that drops one makes check_private_api() name it.
_REGISTRY_FIELDS = ("register", "_backends", "_supported_arg_names", "_active_backend", "_checks_enabled")
_ENUM_FIELDS = ("_member_map_", "_value2member_map_", "_member_names_")
_TEMPLATED_KEYWORDS = ("forward_op", "backward_op", "_parallel_config")
_NATIVE_FORWARD_OP_PARAMS = ("ctx", "query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale",
                             "enable_gqa", "return_lse", "_save_ctx", "_parallel_config")
_PROCESSOR_ATTRIBUTES = ("_attention_backend", "_parallel_config")
_CONTEXT_PARALLEL_FIELDS = ("ring_degree", "ulysses_degree", "ulysses_anything", "_flattened_mesh", "_ulysses_mesh")
# Processors of diffusers.models.attention_processor that call F.scaled_dot_product_attention themselves with
# [B, H, S, D] tensors, and how often one forward calls it: ONE_CALL, once (CogVideoX's, its fused twin, and the
# generic one that HunyuanVideo-1.5's token refiner uses); PER_SAMPLE, once per sample, batch 1, in a loop over the
# batch (Mochi's: each sample over its own valid text tokens, so the B calls of a forward differ in length). Every
# call of a forward is the same (step, layer) cell (runtime/processor_entry.py). Matched by exact class: a subclass
# may call attention otherwise.
ONE_CALL = "one SDPA call per forward"
PER_SAMPLE = "one SDPA call per sample"
SDPA_PROCESSOR_CALLS = {
    "AttnProcessor2_0": ONE_CALL,
    "CogVideoXAttnProcessor2_0": ONE_CALL,
    "FusedCogVideoXAttnProcessor2_0": ONE_CALL,
    "MochiAttnProcessor2_0": PER_SAMPLE,
}
SDPA_PROCESSOR_CLASSES = tuple(SDPA_PROCESSOR_CALLS)
_SDPA_CALL = "F.scaled_dot_product_attention("


def check_private_api() -> list[str]:
    """What of the private API above this diffusers no longer has (empty when all is in place)."""
    problems = []
    registry = getattr(attention_dispatch, "_AttentionBackendRegistry", None)
    if registry is None:
        problems.append("diffusers.models.attention_dispatch._AttentionBackendRegistry is gone")
    else:
        problems += [f"_AttentionBackendRegistry.{f} is gone" for f in _REGISTRY_FIELDS if not hasattr(registry, f)]
    problems += [f"AttentionBackendName.{f} is gone" for f in _ENUM_FIELDS if not hasattr(AttentionBackendName, f)]
    if not hasattr(attention_dispatch, "_CAN_USE_FLEX_ATTN"):
        problems.append("diffusers.models.attention_dispatch._CAN_USE_FLEX_ATTN is gone")
    templated = getattr(attention_dispatch, "_templated_context_parallel_attention", None)
    if templated is None:
        problems.append("diffusers.models.attention_dispatch._templated_context_parallel_attention is gone")
    else:
        params = inspect.signature(templated).parameters
        problems += [f"_templated_context_parallel_attention lost its {p!r} keyword"
                     for p in _TEMPLATED_KEYWORDS if p not in params]
    native_op = getattr(attention_dispatch, "_native_attention_forward_op", None)
    if native_op is None or tuple(inspect.signature(native_op).parameters) != _NATIVE_FORWARD_OP_PARAMS:
        problems.append("the context-parallel forward-op signature changed (diffusers' _native_attention_forward_op "
                        f"no longer takes {', '.join(_NATIVE_FORWARD_OP_PARAMS)})")
    from runtime.models import registered

    problems += _sdpa_processor_problems()
    sdpa_types = sdpa_processor_types()
    # the processors of every registered model (runtime/models/): the installer sets the backend attribute of
    # those that dispatch; the SDPA-calling ones are checked above
    for support in registered():
        for processor in support.processor_classes():
            if processor in sdpa_types:
                continue
            problems += [f"{processor.__name__} has no class attribute {a}" for a in _PROCESSOR_ATTRIBUTES
                         if not hasattr(processor, a)]
    import dataclasses

    from diffusers import ContextParallelConfig, ModelMixin

    cp_fields = {f.name for f in dataclasses.fields(ContextParallelConfig)} | set(vars(ContextParallelConfig))
    problems += [f"ContextParallelConfig has no {f}" for f in _CONTEXT_PARALLEL_FIELDS if f not in cp_fields]
    if not hasattr(ModelMixin, "_parallel_config"):
        problems.append("ModelMixin has no _parallel_config (where enable_parallelism keeps its config)")
    for support in registered():  # the step tracker cross-checks the scheduler against it
        for pipeline in support.pipeline_types():
            if "_current_timestep" not in inspect.getsource(pipeline.__call__):
                problems.append(f"{pipeline.__name__}.__call__ no longer sets the pipeline's _current_timestep")
    if not hasattr(torch.nn.Module, "_compiled_call_impl"):
        problems.append("torch.nn.Module has no _compiled_call_impl (compiled blocks would go unnoticed)")
    # the processor entry (runtime/processor_entry.py) matches SDPA calls by torch's builtin and drops a stale mode
    if SDPA_BUILTIN is not torch.nn.functional.scaled_dot_product_attention:
        problems.append("torch.nn.functional.scaled_dot_product_attention is no longer torch._C._nn's builtin")
    if not callable(getattr(torch.overrides, "_get_current_function_mode", None)):
        problems.append("torch.overrides._get_current_function_mode is gone")
    return problems


def _sdpa_processor_problems() -> list[str]:
    from diffusers.models import attention_processor

    problems = []
    for name in SDPA_PROCESSOR_CLASSES:
        processor = getattr(attention_processor, name, None)
        if processor is None:
            problems.append(f"diffusers.models.attention_processor.{name} is gone")
            continue
        source = inspect.getsource(processor.__call__)
        if source.count(_SDPA_CALL) != 1 or "dispatch_attention_fn" in source:
            problems.append(f"{name}.__call__ no longer makes exactly one {_SDPA_CALL}...) call of its own")
            continue
        per_sample = _sdpa_call_in_batch_loop(source)
        if SDPA_PROCESSOR_CALLS.get(name, ONE_CALL) == PER_SAMPLE and not per_sample:
            problems.append(f"{name}.__call__ no longer makes its {_SDPA_CALL}...) call once per sample (inside a "
                            "`for ... in range(batch_size)` loop)")
        elif SDPA_PROCESSOR_CALLS.get(name, ONE_CALL) == ONE_CALL and _sdpa_call_in_loop(source):
            problems.append(f"{name}.__call__ now makes its {_SDPA_CALL}...) call in a loop, not once per forward")
    return problems


def _sdpa_calls_loops(source: str) -> list[list[ast.For | ast.While]]:
    """For each F.scaled_dot_product_attention call in `source` (a method's source), the loops around it."""
    found: list[list[ast.For | ast.While]] = []

    def walk(node: ast.AST, loops: list) -> None:
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "scaled_dot_product_attention"):
            found.append(loops)
        inner = [*loops, node] if isinstance(node, (ast.For, ast.While)) else loops
        for child in ast.iter_child_nodes(node):
            walk(child, inner)

    walk(ast.parse(textwrap.dedent(source)), [])
    return found


def _sdpa_call_in_loop(source: str) -> bool:
    return any(_sdpa_calls_loops(source))


def _sdpa_call_in_batch_loop(source: str) -> bool:
    """Whether the one SDPA call sits in exactly one loop, `for ... in range(batch_size)`."""
    calls = _sdpa_calls_loops(source)
    if len(calls) != 1 or len(calls[0]) != 1 or not isinstance(calls[0][0], ast.For):
        return False
    it = calls[0][0].iter
    return (isinstance(it, ast.Call) and isinstance(it.func, ast.Name) and it.func.id == "range"
            and len(it.args) == 1 and isinstance(it.args[0], ast.Name) and it.args[0].id == "batch_size")


@functools.cache
def sdpa_processor_types() -> tuple[type, ...]:
    """The classes of SDPA_PROCESSOR_CLASSES this diffusers has."""
    from diffusers.models import attention_processor

    return tuple(getattr(attention_processor, name) for name in SDPA_PROCESSOR_CLASSES
                 if hasattr(attention_processor, name))


def calls_sdpa(processor: Any) -> bool:
    """Whether `processor` is one of the processors that call F.scaled_dot_product_attention themselves."""
    return type(processor) in sdpa_processor_types()


# What `F.scaled_dot_product_attention` is (a builtin), and what a torch function mode receives as `func` for it:
# the processor entry matches calls by it, so that a wrapper someone put on `F` (a test's observer) still reaches it.
SDPA_BUILTIN = getattr(torch._C._nn, "scaled_dot_product_attention", None)  # None: check_private_api says so


def current_function_mode() -> Any:
    """The innermost torch function mode of this thread (None when none is pushed)."""
    return torch.overrides._get_current_function_mode()


def register_attention_backend(value: str, function: Callable[..., Any], *, supports_context_parallel: bool) -> Any:
    """Add `value` to AttentionBackendName and register `function` for it (idempotent). Returns the member.

    cache-dit and others do the same: diffusers offers no public registration of a new backend name.
    """
    enum = AttentionBackendName
    member = enum._value2member_map_.get(value)
    if member is None:
        name = value.upper().replace("-", "_")
        member = str.__new__(enum, value)
        member._name_, member._value_ = name, value
        member.__objclass__ = enum
        type.__setattr__(enum, name, member)
        enum._member_map_[name] = member
        enum._value2member_map_[value] = member
        enum._member_names_.append(name)
    attention_dispatch._AttentionBackendRegistry.register(
        member, constraints=[], supports_context_parallel=supports_context_parallel)(function)
    return member


def backend_call(backend: Any, query: Any, key: Any, value: Any, attn_mask: Any, dropout_p: float, is_causal: bool,
                 scale: Any, enable_gqa: bool, parallel_config: Any) -> Any:
    """What `dispatch_attention_fn(..., backend=backend, parallel_config=...)` does, without rebuilding its
    argument checks per call: the registered function of `backend` (None: the active one) with the arguments it
    takes. With DIFFUSERS_ATTN_CHECKS on, the real dispatch runs (its checks included)."""
    registry = attention_dispatch._AttentionBackendRegistry
    if registry._checks_enabled:
        return dispatch_attention_fn(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p,
                                     is_causal=is_causal, scale=scale, enable_gqa=enable_gqa, backend=backend,
                                     parallel_config=parallel_config)
    if backend is None:
        backend = registry._active_backend
    elif not isinstance(backend, AttentionBackendName):
        backend = AttentionBackendName(backend)
    names = registry._supported_arg_names[backend]
    kwargs = {"query": query, "key": key, "value": value, "attn_mask": attn_mask, "dropout_p": dropout_p,
              "is_causal": is_causal, "scale": scale, "_parallel_config": parallel_config}
    if attention_dispatch._CAN_USE_FLEX_ATTN:  # dispatch passes enable_gqa only on torch >= 2.5
        kwargs["enable_gqa"] = enable_gqa
    return registry._backends[backend](**{k: v for k, v in kwargs.items() if k in names})


def templated_context_parallel_attention(query: Any, key: Any, value: Any, *, forward_op: Callable[..., Any],
                                         parallel_config: Any) -> Any:
    """Run `forward_op` inside diffusers' context-parallel attention (Ulysses: after the all-to-all)."""
    return attention_dispatch._templated_context_parallel_attention(
        query, key, value, forward_op=forward_op, backward_op=_no_backward, _parallel_config=parallel_config)


def _no_backward(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("qcompile's FP8 attention is inference-only: it has no backward pass")


def context_parallel_config(parallel_config: Any) -> Any:
    """The ContextParallelConfig inside a model's or processor's `_parallel_config` (None when none)."""
    return None if parallel_config is None else getattr(parallel_config, "context_parallel_config", None)


def model_parallel_config(model: Any) -> Any:
    return getattr(model, "_parallel_config", None)


def processor_backend(processor: Any) -> Any:
    """The backend a diffusers attention processor dispatches to (None: the active one)."""
    return processor._attention_backend


def has_processor_backend(processor: Any) -> bool:
    """Whether `processor` dispatches through diffusers' attention dispatch with its own backend attribute."""
    return hasattr(processor, "_attention_backend")


def set_processor_backend(processor: Any, backend: Any) -> None:
    processor._attention_backend = backend


def current_timestep(pipe: Any) -> Any:
    """The timestep a diffusers pipeline's denoising loop is at (None outside the loop or when it keeps none)."""
    return getattr(pipe, "_current_timestep", None)


def context_parallel_mesh(cp: Any) -> Any:
    """The device mesh of a ContextParallelConfig's attention collectives (None before diffusers sets it up)."""
    return getattr(cp, "_flattened_mesh", None) or getattr(cp, "_ulysses_mesh", None)


def is_compiled(module: Any) -> bool:
    """Whether `module.compile()` (diffusers' compile_repeated_blocks) compiled this module."""
    return getattr(module, "_compiled_call_impl", None) is not None
