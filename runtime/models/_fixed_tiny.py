"""Tiny builders whose sizes are fixed in their module (runtime/models/tiny_<name>.py), not read from the family
data: the model modules of Flux.1, Qwen-Image and LTX-Video build with them and then check that the pipeline is
the family's (block lists and lengths, heads x head dim), so a family file with other sizes is refused by name
instead of silently running a pipeline its plans do not fit."""

from __future__ import annotations

from typing import Any

from runtime.models.base import ModelSupportError


def check_tiny_fits(pipe: Any, family: Any, builder: str) -> Any:
    """Return `pipe` if its components have `family`'s block lists, lengths and heads; else ModelSupportError."""
    problems = []
    for component in family.components:
        model = getattr(pipe, component.name, None)
        if model is None:
            problems.append(f"no component {component.name}")
            continue
        for block_list in component.block_lists:
            try:
                length = len(model.get_submodule(block_list.path))
            except AttributeError:
                problems.append(f"{component.name} has no {block_list.path}")
                continue
            if length != block_list.length:
                problems.append(f"{component.name}.{block_list.path} has {length} blocks, the family {block_list.length}")
        for kind in family.kind_specs:
            path = f"{component.block_list(kind.block_list).path}.0.{kind.module}"
            attn = model.get_submodule(path)
            heads = kind.num_heads or component.num_heads
            head_dim = kind.head_dim or component.head_dim
            if (attn.heads, attn.inner_dim // attn.heads) != (heads, head_dim):
                problems.append(f"{component.name}.{path} has {attn.heads} heads x {attn.inner_dim // attn.heads}, "
                                f"the family {heads} x {head_dim}")
    if problems:
        raise ModelSupportError(
            f"the tiny pipeline of {builder} has fixed sizes that do not fit family {family.name}"
            f"{f' ({family.variant})' if family.variant else ''}: {'; '.join(problems)}. Use the family's `tiny` "
            f"variant, or build the pipeline yourself")
    return pipe
