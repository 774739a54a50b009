"""A model family as typed data: components, their block lists, the attention kinds each block holds.

A family file (format 2, schemas/family.schema.json) and the `family` a plan records (plan format 2) map onto
these frozen dataclasses; format-1 family files and plans are converted in memory (`family_v1_to_v2`,
`structure_v1_to_v2`), so every reader sees one shape. Nothing here knows a family, a kind or a block list by
name: the one exception is the format-1 conversion, which is what format 1 meant (one list `blocks`, tokens
video/text/image, `self` video->video and every other kind video->text+image).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

LAYER = "{layer}"
V1_BLOCK_LIST = "blocks"
_V1_TOKENS = (("self_tokens", "video"), ("text_tokens", "text"), ("image_tokens", "image"))


@dataclass(frozen=True)
class BlockList:
    """A list of transformer blocks inside a component: `path` is its attribute path, `length` its blocks."""

    name: str
    path: str
    length: int


@dataclass(frozen=True)
class Component:
    name: str
    role: str
    diffusers_class: str
    num_heads: int
    head_dim: int
    block_lists: tuple[BlockList, ...]

    @property
    def block_list_names(self) -> tuple[str, ...]:
        return tuple(b.name for b in self.block_lists)

    def block_list(self, name: str) -> BlockList:
        for block_list in self.block_lists:
            if block_list.name == name:
                return block_list
        raise KeyError(name)


@dataclass(frozen=True)
class AttentionKind:
    """One attention module per block of `block_list`, at `{block_list.path}.{layer}.{module}`."""

    name: str
    block_list: str
    module: str
    description: str
    query_tokens: tuple[str, ...]
    key_tokens: tuple[str, ...]
    num_heads: int | None = None  # overrides the component's
    head_dim: int | None = None


@dataclass(frozen=True)
class Family:
    name: str
    variant: str | None
    description: str
    pipeline_class: str
    components: tuple[Component, ...]
    kind_specs: tuple[AttentionKind, ...]  # sorted by name
    boundary_ratio: float | None
    num_train_timesteps: int
    scheduler_class: str
    flow_shift: float | None  # None: no one fixed shift (dynamic shifting, checkpoint-only); one component only
    batch: int
    cfg: bool
    tokens: tuple[tuple[str, int], ...]  # token role -> count at the reference shapes
    shapes_description: str
    variants: tuple[str, ...] = ()
    # Sizes the pipeline takes (family file `frames` / `pixels`; None: any). A plan does not record them.
    frames_rule: tuple[int, int] | None = None  # (multiple_of, plus): frame counts multiple_of * k + plus
    pixels_multiple_of: int | None = None

    def frame_size_problem(self, height: int, width: int, num_frames: int) -> tuple[str, str] | None:
        """(which option, what is wrong) when the pipeline cannot generate this video size, else None."""
        if self.pixels_multiple_of and (height % self.pixels_multiple_of or width % self.pixels_multiple_of):
            return ("height/width", f"{height}x{width}: height and width must be multiples of "
                                    f"{self.pixels_multiple_of} for {self.name}")
        if self.frames_rule is not None:
            step, plus = self.frames_rule
            if num_frames < plus or (num_frames - plus) % step:
                examples = ", ".join(str(plus + step * k) for k in (1, 2, 20))
                return ("num_frames", f"{num_frames}: {self.name} generates {step}k+{plus} frames (e.g. {examples})")
        return None

    # -- names ----------------------------------------------------------------------------------------
    @property
    def display_name(self) -> str:
        return f"{self.name} ({self.variant} variant)" if self.variant else self.name

    @property
    def component_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.components)

    @property
    def kinds(self) -> tuple[str, ...]:
        """Attention kind names, sorted."""
        return tuple(k.name for k in self.kind_specs)

    @property
    def block_list_names(self) -> tuple[str, ...]:
        """Every block list name, in the order the components declare them."""
        names: dict[str, None] = {}
        for component in self.components:
            names.update(dict.fromkeys(component.block_list_names))
        return tuple(names)

    def kinds_in(self, block_lists: tuple[str, ...] | list[str] | set[str]) -> tuple[str, ...]:
        """The kinds (sorted) that live in any of these block lists."""
        return tuple(k.name for k in self.kind_specs if k.block_list in block_lists)

    # -- lookups ---------------------------------------------------------------------------------------
    def component(self, name: str) -> Component:
        for component in self.components:
            if component.name == name:
                return component
        raise KeyError(name)

    def kind(self, name: str) -> AttentionKind:
        for kind in self.kind_specs:
            if kind.name == name:
                return kind
        raise KeyError(name)

    def block_list(self, component: str, name: str) -> BlockList:
        return self.component(component).block_list(name)

    def num_layers(self, component: str, kind: str) -> int:
        """Blocks of `kind`'s block list in `component`: the row length of that table."""
        return self.block_list(component, self.kind(kind).block_list).length

    def module_path(self, component: str, kind: str, layer: int) -> str:
        spec = self.kind(kind)
        return f"{self.block_list(component, spec.block_list).path}.{layer}.{spec.module}"

    def heads(self, component: str, kind: str) -> tuple[int, int]:
        """(num_heads, head_dim) of `kind`'s calls in `component`."""
        spec, owner = self.kind(kind), self.component(component)
        return (spec.num_heads or owner.num_heads, spec.head_dim or owner.head_dim)

    def call_tokens(self, kind: str) -> tuple[int, int]:
        """(query tokens, key/value tokens) of one `kind` call at the reference shapes."""
        spec, tokens = self.kind(kind), dict(self.tokens)
        return (sum(tokens.get(r, 0) for r in spec.query_tokens), sum(tokens.get(r, 0) for r in spec.key_tokens))

    def shapes(self) -> dict[str, Any]:
        """The reference shapes as a family file (format 2) writes them."""
        return {"batch": self.batch, "cfg": self.cfg, "tokens": dict(self.tokens),
                "description": self.shapes_description}

    # -- plan record -----------------------------------------------------------------------------------
    def structure(self) -> dict[str, Any]:
        """The part of the family a plan (format 2) records and a runtime checks against the real pipeline."""
        kinds = {}
        for kind in self.kind_specs:
            entry: dict[str, Any] = {"block_list": kind.block_list, "module": kind.module,
                                     "query_tokens": list(kind.query_tokens), "key_tokens": list(kind.key_tokens)}
            if kind.num_heads is not None:
                entry["num_heads"] = kind.num_heads
            if kind.head_dim is not None:
                entry["head_dim"] = kind.head_dim
            kinds[kind.name] = entry
        return {
            "name": self.name,
            "variant": self.variant,
            "pipeline_class": self.pipeline_class,
            "boundary_ratio": self.boundary_ratio,
            "num_train_timesteps": self.num_train_timesteps,
            "flow_shift": self.flow_shift,
            "components": [
                {"name": c.name, "diffusers_class": c.diffusers_class, "num_heads": c.num_heads,
                 "head_dim": c.head_dim,
                 "block_lists": [{"name": b.name, "path": b.path, "length": b.length} for b in c.block_lists]}
                for c in self.components
            ],
            "attention_kinds": kinds,
            "reference_shapes": self.shapes(),
        }

    @classmethod
    def from_structure(cls, structure: Mapping[str, Any]) -> Family:
        """The family a plan records (`plan["family"]`, plan format 1 or 2), without the family file's prose."""
        data = structure if _is_v2_structure(structure) else structure_v1_to_v2(structure)
        return build_family(
            {**data, "description": "", "scheduler": {"class": "", "flow_shift": data["flow_shift"]}},
            variant=None, recorded_variant=data["variant"])


def _is_v2_structure(structure: Mapping[str, Any]) -> bool:
    return all("block_lists" in c for c in structure["components"])


def build_family(data: Mapping[str, Any], variant: str | None, *, recorded_variant: str | None = None) -> Family:
    """A Family from format-2 family data (a family file, or a plan's recorded family plus defaults),
    with `variant`'s overrides applied. Unknown variants raise KeyError (the caller says which exist)."""
    components = [dict(c) for c in data["components"]]
    scheduler = dict(data["scheduler"])
    shapes = dict(data["reference_shapes"])
    variants = data.get("variants") or {}
    if variant is not None:
        override = variants[variant]
        by_name = {c["name"]: c for c in override.get("components", [])}
        for component in components:
            component.update({k: v for k, v in by_name.get(component["name"], {}).items() if k != "name"})
        scheduler.update(override.get("scheduler", {}))
        shapes.update(override.get("reference_shapes", {}))
    return Family(
        name=data["name"],
        variant=variant if variant is not None else recorded_variant,
        description=data["description"],
        pipeline_class=data["pipeline_class"],
        components=tuple(
            Component(name=c["name"], role=c.get("role", ""), diffusers_class=c["diffusers_class"],
                      num_heads=c["num_heads"], head_dim=c["head_dim"],
                      block_lists=tuple(BlockList(b["name"], b["path"], b["length"]) for b in c["block_lists"]))
            for c in components
        ),
        kind_specs=tuple(
            AttentionKind(name=name, block_list=spec["block_list"], module=spec["module"],
                          description=spec.get("description", ""), query_tokens=tuple(spec["query_tokens"]),
                          key_tokens=tuple(spec["key_tokens"]), num_heads=spec.get("num_heads"),
                          head_dim=spec.get("head_dim"))
            for name, spec in sorted(data["attention_kinds"].items())
        ),
        boundary_ratio=data["boundary_ratio"],
        num_train_timesteps=data["num_train_timesteps"],
        scheduler_class=scheduler["class"],
        flow_shift=scheduler["flow_shift"],
        batch=shapes.get("batch", 1),
        cfg=shapes.get("cfg", True),
        tokens=tuple(sorted(shapes["tokens"].items())),
        shapes_description=shapes.get("description", ""),
        variants=tuple(sorted(variants)),
        frames_rule=(data["frames"]["multiple_of"], data["frames"]["plus"]) if "frames" in data else None,
        pixels_multiple_of=data["pixels"]["multiple_of"] if "pixels" in data else None,
    )


def structure_problems(data: Mapping[str, Any]) -> list[tuple[tuple, str]]:
    """(JSON path, message) of what format-2 family data (file or plan record) says inconsistently."""
    problems: list[tuple[tuple, str]] = []
    seen: set[str] = set()
    for index, component in enumerate(data["components"]):
        if component["name"] in seen:
            problems.append((("components", index, "name"), f"component {component['name']!r} is listed twice"))
        seen.add(component["name"])
        lists = [b["name"] for b in component["block_lists"]]
        for position, name in enumerate(lists):
            if name in lists[:position]:
                problems.append((("components", index, "block_lists", position, "name"),
                                 f"block list {name!r} is listed twice"))
    for kind, spec in data["attention_kinds"].items():
        for index, component in enumerate(data["components"]):
            names = [b["name"] for b in component["block_lists"]]
            if spec["block_list"] not in names:
                problems.append((("attention_kinds", kind, "block_list"),
                                 f"kind {kind!r} lives in block list {spec['block_list']!r}, which component "
                                 f"{component['name']!r} (components[{index}]) lacks (its block lists: "
                                 f"{', '.join(names)})"))
    return problems


# -- format 1 -> format 2, in memory --------------------------------------------------------------------


def _split_module(pattern: str) -> tuple[str, str]:
    """`blocks.{layer}.attn1` -> (`blocks`, `attn1`)."""
    head, _, tail = pattern.partition("." + LAYER + ".")
    if not tail:
        raise ValueError(f"module pattern {pattern!r} is not PATH.{LAYER}.MODULE")
    return head, tail


def _v1_kinds(kinds: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    converted, paths = {}, set()
    for name, spec in kinds.items():
        path, module = _split_module(spec["module"])
        paths.add(path)
        entry = {"block_list": V1_BLOCK_LIST, "module": module, "query_tokens": ["video"],
                 "key_tokens": ["video"] if name == "self" else ["text", "image"]}
        if "description" in spec:
            entry["description"] = spec["description"]
        converted[name] = entry
    if len(paths) != 1:
        raise ValueError(f"format-1 kinds live in one block list; these modules name {sorted(paths)}")
    return converted, paths.pop()


def _v1_shapes(shapes: Mapping[str, Any]) -> dict[str, Any]:
    converted = {k: v for k, v in shapes.items() if k in ("batch", "cfg", "description")}
    converted["tokens"] = {role: shapes[key] for key, role in _V1_TOKENS if key in shapes}
    return converted


def _v1_components(components: list, path: str | None) -> list[dict[str, Any]]:
    out = []
    for c in components:
        entry = {k: v for k, v in c.items() if k != "num_layers"}
        if "num_layers" in c:
            entry["block_lists"] = [{"name": V1_BLOCK_LIST, "path": path, "length": c["num_layers"]}]
        out.append(entry)
    return out


def family_v1_to_v2(data: Mapping[str, Any]) -> dict[str, Any]:
    """A schema-valid format-1 family file as format-2 data (ValueError if its module patterns are not
    PATH.{layer}.MODULE in one PATH)."""
    kinds, path = _v1_kinds(data["attention_kinds"])
    out = {k: v for k, v in data.items() if k not in ("components", "attention_kinds", "reference_shapes", "variants")}
    out.update(family_format=2, components=_v1_components(data["components"], path), attention_kinds=kinds,
               reference_shapes=_v1_shapes(data["reference_shapes"]))
    if "variants" in data:
        out["variants"] = {
            name: {k: (_v1_shapes(v) if k == "reference_shapes" else v) for k, v in variant.items()}
            for name, variant in data["variants"].items()
        }
    return out


def structure_v1_to_v2(structure: Mapping[str, Any]) -> dict[str, Any]:
    """The `family` of a format-1 plan as a format-2 plan records it."""
    kinds, path = _v1_kinds(structure["attention_kinds"])
    return {**structure, "components": _v1_components(list(structure["components"]), path),
            "attention_kinds": kinds, "reference_shapes": _v1_shapes(structure["reference_shapes"])}
