"""What a quantized attention format (a plan `dtype`) is, as data: `FormatSpec`, and the typed numerics record
`Numerics` that the compiler writes into plans and the runtime runs with.

Torch-free: the compiler, the CLI, the schemas and the export targets read the same specs as the runtime. One
spec per module of this package (qcompiler/formats/<dtype>.py, a module-level `FORMAT`); the runtime's
quantizer for it lives in runtime/quant/ and registers itself under the same name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from qcompiler.numerics import DEFAULT_ROTATION_SEED, KV_BLOCK_TOKENS, QUERY_BLOCK_TOKENS


@dataclass(frozen=True)
class ForeignKeyRule:
    """The finding when a recipe of ANOTHER dtype sets a numerics key only this format has. `message` and `hint`
    are str.format templates over {key}, {owner} (this format's name) and {dtype} (the recipe's dtype);
    `at_key`: the diagnostic points at the key (True) or at its value."""

    code: str
    message: str
    hint: str
    at_key: bool = True


@dataclass(frozen=True)
class NumericsKey:
    """One key of a format's `numerics`.

    default: its value when a recipe leaves it out (or always, when not `settable`). allowed: the values it may
    take (None: any value of its schema type). settable: a recipe may set it (False: fixed by the kernel, the
    plan records `default`). when_set: recorded in the plan only when the recipe sets it (so plans that never
    name it keep their hash). foreign: how a recipe of another dtype setting it is refused (None: it is not
    refused by this format's rule, e.g. a key every format has).
    """

    name: str
    default: Any
    allowed: tuple[Any, ...] | None = None
    settable: bool = True
    when_set: bool = False
    foreign: ForeignKeyRule | None = None


@dataclass(frozen=True)
class RecipeFinding:
    """A finding about a recipe's dtype/numerics, located by the caller: `path` into the recipe, `at_key` points
    at the key rather than its value."""

    path: tuple[str, ...]
    at_key: bool
    severity: str
    code: str
    message: str
    hint: str


# The keys every format has, in the order formats list them: the Q/K rotation and its seed, then (after any
# fixed block sizes) K mean subtraction, whose default differs per format (k_mean_subtraction_key).
HADAMARD_ROTATION = NumericsKey("hadamard_rotation", True, (True, False))
ROTATION_SEED = NumericsKey("rotation_seed", DEFAULT_ROTATION_SEED)


def k_mean_subtraction_key(default: bool) -> NumericsKey:
    return NumericsKey("k_mean_subtraction", default, (True, False))


def smoothed_unrotated_numerics(pv_precision: str) -> tuple[NumericsKey, ...]:
    """The numerics keys of the SageAttention formats: no Q/K rotation (the library does none; a recipe asking for
    it is refused, QC154), a seed recorded but unused (suggest and calibrate files carry one), K smoothing on (the
    library's and diffusers' default), and P @ V precision fixed by the kernel (recorded only if a recipe names it:
    the sensitivity schema has no such key)."""
    return (
        NumericsKey("hadamard_rotation", False, (False,)),
        ROTATION_SEED,
        k_mean_subtraction_key(True),
        NumericsKey("pv_precision", pv_precision, (pv_precision,), settable=False, when_set=True),
    )


def per_block_numerics(*extra: NumericsKey) -> tuple[NumericsKey, ...]:
    """The numerics keys of the formats whose plans record the per-block kernel's token blocks (fixed by the
    kernel contract, not settable): rotation, seed, the two block sizes, K mean subtraction (off), then `extra`."""
    return (
        HADAMARD_ROTATION,
        ROTATION_SEED,
        NumericsKey("query_block_tokens", QUERY_BLOCK_TOKENS, (QUERY_BLOCK_TOKENS,), settable=False),
        NumericsKey("kv_block_tokens", KV_BLOCK_TOKENS, (KV_BLOCK_TOKENS,), settable=False),
        k_mean_subtraction_key(False),
        *extra,
    )


@dataclass(frozen=True)
class FormatSpec:
    """One quantized attention format.

    name: the plan/recipe `dtype`. element: the element type of quantized q/k/v (a name, never a torch dtype).
    label: a few words for `qcompile show` and reports. description: one sentence for docs and --help.
    order: position in listings (schema enums, --dtype choices). numerics: its keys, in the order a plan records
    them. speed_factor: quantized / native (BF16) attention time for the same work, as measured on a target
    (None: never measured; estimates then say so instead of borrowing another format's figure), with
    speed_factor_source. targets: its name in each export target ("vllm-omni" diffusion_kv_cache_dtype,
    "mindiesd-precision" quant_attention `precision=`, "mindiesd-strategy" TimestepPolicyConfig FA strategy,
    "xdit" default quantized AttentionBackendType); a target it lacks cannot run it, and `target_refusals` may say
    why (by target key; "*" for every target). display_name: how output names what its cells run (None:
    "quantized (<name>)"). cell_word: what `show` calls a row's quantized cells. recipe_warning: a located
    warning (code, message, hint) every recipe of this dtype gets. numerics_summary: a `show` line over the plan's
    numerics (str.format template; booleans as on/off), or None.
    """

    name: str
    element: str
    label: str
    description: str
    order: int
    numerics: tuple[NumericsKey, ...]
    speed_factor: float | None = None
    speed_factor_source: str = "never measured"
    targets: Mapping[str, str] = field(default_factory=dict)
    target_refusals: Mapping[str, str] = field(default_factory=dict)
    display_name: str | None = None
    cell_word: str = "quantized"
    recipe_warning: tuple[str, str, str] | None = None
    numerics_summary: str | None = None

    def __post_init__(self) -> None:
        names = [key.name for key in self.numerics]
        unknown = set(names) - NUMERICS_FIELDS
        if unknown or len(set(names)) != len(names):
            raise ValueError(f"format {self.name}: numerics keys {sorted(unknown) or names} are unknown or repeated; "
                             f"a key must be a field of qcompiler.formats.Numerics ({', '.join(sorted(NUMERICS_FIELDS))})")

    def key(self, name: str) -> NumericsKey | None:
        return next((key for key in self.numerics if key.name == name), None)

    @property
    def key_names(self) -> tuple[str, ...]:
        return tuple(key.name for key in self.numerics)

    @property
    def recipe_keys(self) -> tuple[str, ...]:
        """The numerics keys a recipe of this dtype may set."""
        return tuple(key.name for key in self.numerics if key.settable)

    @property
    def required_plan_keys(self) -> tuple[str, ...]:
        """The keys every plan of this dtype records."""
        return tuple(key.name for key in self.numerics if not key.when_set)

    @property
    def quantized_name(self) -> str:
        return self.display_name or f"quantized ({self.name})"

    def plan_numerics(self, recipe_numerics: Mapping[str, Any] | None) -> dict[str, Any]:
        """The `numerics` object a plan records for a recipe's (possibly partial) `numerics:` mapping: the
        recipe's value or the default for settable keys, the kernel's value for fixed ones, and `when_set` keys
        only when the recipe sets them."""
        given = recipe_numerics or {}
        recorded: dict[str, Any] = {}
        for key in self.numerics:
            if key.when_set and key.name not in given:
                continue
            recorded[key.name] = given.get(key.name, key.default) if key.settable else key.default
        return recorded

    def record(self, recipe_numerics: Mapping[str, Any] | None = None) -> Numerics:
        """The typed record of what a recipe with `numerics: {recipe_numerics}` compiles to."""
        return Numerics.from_mapping(self.plan_numerics(recipe_numerics), dtype=self.name)

    def describe_numerics(self, plan_numerics: Mapping[str, Any]) -> str | None:
        """`numerics_summary` filled with a plan's numerics (booleans as on/off), or None."""
        if self.numerics_summary is None:
            return None
        values = {k: ("on" if v else "off") if isinstance(v, bool) else v for k, v in plan_numerics.items()}
        return self.numerics_summary.format(**values)

    def target_name(self, target: str) -> str | None:
        """Its name in export target `target` (a key of `targets`), or None where that target cannot run it."""
        return self.targets.get(target)

    def target_refusal(self, target: str) -> str | None:
        return self.target_refusals.get(target) or self.target_refusals.get("*")


# Keys the numerics record can hold (its fields but `dtype`); a format's keys are a subset.
NUMERICS_FIELDS: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Numerics:
    """The numerics a plan fixes, typed: written by the compiler (FormatSpec.plan_numerics, which is
    `to_mapping` of this record), read by the runtime (`from_plan`). One record for every format: the fields a
    format does not have keep their defaults and are neither recorded nor read (FormatSpec.numerics says which
    a format has). Defaults are those of the default format, fp8_e4m3_per_block."""

    dtype: str = "fp8_e4m3_per_block"
    hadamard_rotation: bool = True
    rotation_seed: int = DEFAULT_ROTATION_SEED
    k_mean_subtraction: bool = False
    query_block_tokens: int = 128
    kv_block_tokens: int = 256
    pv_precision: str = "e4m3"  # P in P @ V of the per-block FP8 kernels; absent in a plan means e4m3
    v_rotation: bool = True  # int8_per_tensor: V times a second Hadamard, the output times its transpose
    p_scale: int = 127  # int8_per_tensor: the factor P~ = exp(s - max) is quantized with
    scale_scope: str = "call"  # int8_per_tensor: "call": one scale per tensor per call; "head": per head

    def __post_init__(self) -> None:
        from qcompiler.formats import FORMATS, get_format

        spec = get_format(self.dtype) if self.dtype in FORMATS else None
        if spec is None:
            raise ValueError(f"unknown quantized attention dtype {self.dtype!r}; choose one of {', '.join(FORMATS)}")
        for key in spec.numerics:
            value = getattr(self, key.name)
            if key.allowed is not None and value not in key.allowed:
                raise ValueError(f"{self.dtype} numerics: {key.name} {value!r} is not one of "
                                 f"{', '.join(str(v) for v in key.allowed)}")

    @property
    def spec(self) -> FormatSpec:
        from qcompiler.formats import get_format

        return get_format(self.dtype)

    @property
    def is_int8(self) -> bool:
        return self.dtype == "int8_per_tensor"

    @property
    def rotated(self) -> bool:
        """Whether any input is rotated by a Hadamard (Q/K, or V where the format has v_rotation)."""
        return self.hadamard_rotation or ("v_rotation" in self.spec.key_names and self.v_rotation)

    @classmethod
    def for_dtype(cls, dtype: str, **given: Any) -> Numerics:
        """`dtype`'s numerics with the recipe defaults for what `given` leaves out: what a recipe with
        `numerics: {given}` compiles to."""
        from qcompiler.formats import get_format

        return get_format(dtype).record(given)

    @classmethod
    def int8(cls, **given: Any) -> Numerics:
        """int8_per_tensor numerics, recipe defaults for what `given` leaves out (all three transforms on)."""
        return cls.for_dtype("int8_per_tensor", **given)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, dtype: str) -> Numerics:
        """From a plan's `numerics` object; `dtype` is the plan's top-level `dtype` (required, so a caller cannot
        forget it and run an MX plan as per-block FP8). Keys the format records only when set take their default
        when absent; keys the format lacks are ignored."""
        from qcompiler.formats import get_format

        spec = get_format(dtype)
        values: dict[str, Any] = {}
        for key in spec.numerics:
            if key.name in data:
                values[key.name] = _coerce(cls, key.name, data[key.name])
            elif key.when_set:
                values[key.name] = key.default
            else:
                raise KeyError(key.name)
        return cls(dtype=dtype, **values)

    @classmethod
    def from_plan(cls, plan: Any) -> Numerics:
        """From a loaded qcompiler Plan (its `numerics` object and its `dtype`)."""
        return cls.from_mapping(plan.numerics, dtype=plan.data["dtype"])

    def to_mapping(self) -> dict[str, Any]:
        """The plan's `numerics` object (inverse of from_mapping): the format's keys in its order; a `when_set`
        key only when it differs from its default."""
        return {key.name: getattr(self, key.name) for key in self.spec.numerics
                if not key.when_set or getattr(self, key.name) != key.default}

    def with_values(self, **changes: Any) -> Numerics:
        return replace(self, **changes)


def _coerce(cls: type, name: str, value: Any) -> Any:
    kind = {f.name: f.type for f in fields(cls)}[name]
    return {"bool": bool, "int": int, "str": str}.get(kind, lambda v: v)(value)


NUMERICS_FIELDS = frozenset(f.name for f in fields(Numerics)) - {"dtype"}
