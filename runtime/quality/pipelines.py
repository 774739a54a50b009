"""Pipelines and call arguments shared by `qcompile report` and `qcompile calibrate`.

`--pipeline tiny` builds the family's tiny offline pipeline (runtime.tiny); `--pipeline PATH` loads a saved
diffusers pipeline folder with no network access. A sample is one (seed, prompt) pair; its call arguments
carry pre-computed prompt embeddings, so no text-cleaning dependency (ftfy) is needed.
"""

from __future__ import annotations

import inspect
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from qcompiler.cli.run_options import generates_video
from qcompiler.errors import QcompileError
from qcompiler.families import Component, Family, get_family, list_families
from qcompiler.families.model import AttentionKind
from qcompiler.stats import attention_flops
from runtime import tiny
from runtime.models import model_support
from runtime.models.base import DEFAULT_NEGATIVE_PROMPT
from runtime.models.base import DEFAULT_PROMPT as DEFAULT_PROMPT  # the commands' default, read from here

DEFAULT_GUIDANCE_SCALE = 5.0


class PipelineLoadError(QcompileError):
    """A pipeline folder could not be loaded, or does not match the family it is used with."""


@dataclass(frozen=True)
class FrameSettings:
    """Size of every run. None: the model module's (runtime/models/) size, its tiny pipeline's (Wan and Flux.1
    16x16, Qwen-Image and LTX-Video 32x32; 9 frames for a video family). `num_frames` only for a family that
    generates video (`generates_video`); an image family's runs are recorded as 1 frame."""

    height: int | None = None
    width: int | None = None
    num_frames: int | None = None
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE
    max_sequence_length: int | None = None  # None: the model module's (tiny or real) text length

    def resolved(self, pipe, family: Family) -> FrameSettings:
        """These settings with every size filled in for `pipe` (num_frames None for an image family)."""
        support = model_support(pipe)
        if not support.has_call_arguments():  # before any run or progress bar starts
            raise support.no_call_arguments(pipe)
        height, width = support.sample_size
        video = generates_video(family)
        if not video and self.num_frames is not None:
            raise PipelineLoadError(f"{family.name} generates images: num_frames ({self.num_frames}) does not apply; "
                                    "leave it unset")
        return replace(self, height=self.height or height, width=self.width or width,
                       num_frames=(self.num_frames or support.sample_frames) if video else None)

    @property
    def recorded_frames(self) -> int:
        """The frame count a report or sensitivity file records: an image is one frame."""
        return self.num_frames or 1


def load_pipeline(spec: str, family_name: str):
    """`tiny` -> the family's tiny pipeline (seeded weights); anything else -> a local diffusers folder."""
    if spec == "tiny":
        try:
            return tiny.build_tiny_pipeline(family_name)
        except ValueError as exc:  # no tiny builder for this family's pipeline class
            raise PipelineLoadError(str(exc)) from None
    folder = Path(spec)
    if not (folder / "model_index.json").is_file():
        raise PipelineLoadError(
            f"{spec}: not a saved diffusers pipeline folder (no model_index.json); pass --pipeline tiny or a "
            "folder written by pipe.save_pretrained(...)"
        )
    # A report or a calibration must never download: a missing file is an error, not a fetch.
    os.environ["HF_HUB_OFFLINE"] = "1"
    import diffusers.utils.logging
    import transformers.utils.logging
    from diffusers import DiffusionPipeline

    # Their loading bars would interleave with ours on stderr; loading a local folder takes seconds.
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()

    try:
        pipe = DiffusionPipeline.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise PipelineLoadError(f"{spec}: cannot load the pipeline offline: {exc}") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe


def detect_variant(pipe, family_name: str) -> str | None:
    """Which variant of the family the pipeline's transformers are (None = the real model), by heads x head dim.

    Refuses (PipelineLoadError) a pipeline whose class, denoiser components or layer counts are not the family's,
    naming the families that do match, before anything runs."""
    base = get_family(family_name)
    mismatch = _structure_mismatch(pipe, base)
    if mismatch is None:
        variant = _matching_variant(pipe, base)
        if variant is not False:
            return variant
        seen = {c.name: _shape_of(getattr(pipe, c.name, None), c) for c in base.components}
        mismatch = f"its transformers {seen} (layers, heads, head dim) match no variant of {family_name}"
    matching = [name for name in _matching_family_names(pipe) if name != family_name]
    fix = (f"pass --family {matching[0]}" + (f" (or {', '.join(matching[1:])})" if matching[1:] else "") if matching
           else "pass the --family of this pipeline (`qcompile families` lists them)")
    raise PipelineLoadError(f"the pipeline is not a {family_name} pipeline: {mismatch}; {fix}")


def _matching_variant(pipe, base: Family) -> str | None | bool:
    """The variant whose components' (layers, heads, head dim) the pipeline's transformers have; False if none."""
    for variant in (None, *base.variants):
        family = get_family(base.name, variant)
        if all(_shape_of(getattr(pipe, c.name, None), c) == _wanted(c) for c in family.components):
            return variant
    return False


def _structure_mismatch(pipe, family: Family) -> str | None:
    """What in the pipeline's class or denoiser components differs from `family`, or None."""
    classes = [klass.__name__ for klass in type(pipe).__mro__]
    if family.pipeline_class not in classes:
        return f"it is a {type(pipe).__name__}, the family runs a {family.pipeline_class}"
    denoiser_classes = {c.diffusers_class for c in family.components}
    present = sorted(name for name, module in getattr(pipe, "components", {}).items()
                     if module is not None and type(module).__name__ in denoiser_classes)
    expected = sorted(c.name for c in family.components)
    if present != expected:
        return f"it has the transformers {present}, the family has {expected}"
    for component in family.components:
        layers = _shape_of(getattr(pipe, component.name), component)[0]
        if layers != _wanted(component)[0]:
            return f"its {component.name} has {layers} layers, the family's has {_wanted(component)[0]}"
    return None


def _matching_family_names(pipe) -> list[str]:
    return [family.name for family in list_families()
            if _structure_mismatch(pipe, family) is None and _matching_variant(pipe, family) is not False]


def _shape_of(model, component: Component) -> tuple[int | tuple[int, ...], int, int] | None:
    """(blocks of each of the component's block lists, heads, head dim); one list: its block count alone."""
    if model is None:
        return None
    from runtime.checks import block_list_length

    config = model.config
    layers = tuple(block_list_length(model, b.path) for b in component.block_lists)
    return (layers[0] if len(layers) == 1 else layers, config.num_attention_heads, config.attention_head_dim)


def _wanted(component: Component) -> tuple[int | tuple[int, ...], int, int]:
    layers = tuple(b.length for b in component.block_lists)
    return (layers[0] if len(layers) == 1 else layers, component.num_heads, component.head_dim)


def call_kwargs(pipe, *, spec: str, seed: int, prompt: str, steps: int, frames: FrameSettings,
                output_type: str = "np") -> dict[str, Any]:
    """Arguments for one pipeline call: seeded generator, the prompt encoded as the pipeline's model module does
    (runtime/models/), and that pipeline class's conditioning (e.g. a flat test image for image-to-video)."""
    support = model_support(pipe)
    max_length = frames.max_sequence_length or support.text_tokens(pipe, tiny=spec == "tiny")
    height, width = support.sample_size
    # Unset sizes: the model module's (`FrameSettings.resolved` says which; a video model's frame count too).
    return support.call_kwargs(
        pipe, prompt=prompt, negative_prompt=DEFAULT_NEGATIVE_PROMPT, height=frames.height or height,
        width=frames.width or width,
        num_frames=frames.num_frames, steps=steps, guidance_scale=frames.guidance_scale, seed=seed,
        max_length=max_length, output_type=output_type)


def run_frames(pipe, kwargs: dict[str, Any]) -> torch.Tensor:
    """Run the pipeline; decoded frames as a float tensor in [0, 1], shaped (batch, frames, H, W, C) (an image
    pipeline's output is one frame)."""
    with torch.no_grad():
        output = pipe(**kwargs)
    frames = getattr(output, "frames", None)
    if frames is None:
        return torch.as_tensor(output.images, dtype=torch.float32).unsqueeze(1)
    return torch.as_tensor(frames, dtype=torch.float32)


def attention_tokens(kind: AttentionKind, hidden: torch.Tensor, context: torch.Tensor | None) -> tuple[int, int]:
    """(query tokens, key/value tokens) of one call of an attention module of `kind`, from its inputs. A joint
    kind (the same tokens on both sides, per the family file: Flux, Qwen-Image) gets the text as
    `encoder_hidden_states` and attends over both streams concatenated; a cross kind attends from the hidden
    states to the context; a self kind has no context."""
    q_tokens = int(hidden.shape[1])
    if context is None:
        return q_tokens, q_tokens
    if set(kind.query_tokens) == set(kind.key_tokens):
        joint = q_tokens + int(context.shape[1])
        return joint, joint
    return q_tokens, int(context.shape[1])


def progress_bar(total: int, enabled: bool, description: str):
    """A tqdm bar on stderr counting denoising steps (stdout stays clean for the command's result)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit="step", file=sys.stderr, disable=not enabled, leave=False)


def step_callback(bar) -> Callable:
    """A `callback_on_step_end` that advances `bar` by one step."""
    def on_step_end(pipe, step, timestep, callback_kwargs):
        bar.update(1)
        return callback_kwargs

    return on_step_end


def progress_kwargs(pipe, bar, steps: int) -> dict[str, Any]:
    """The call arguments that advance `bar` once per denoising step: `callback_on_step_end`, where the pipeline
    takes one. A pipeline without it (HunyuanVideo15Pipeline) gets no extra argument, and the bar advances by the
    call's `steps` at once."""
    if "callback_on_step_end" in inspect.signature(type(pipe).__call__).parameters:
        return {"callback_on_step_end": step_callback(bar)}
    bar.update(steps)
    return {}


class FlopCounter:
    """Attention FLOPs per call of each (component, kind), from the shapes the attention modules really see.

    A forward pre-hook on every attention module reads B and S_q from `hidden_states`, S_kv from
    `encoder_hidden_states` (self-attention: S_q), heads and head dim from the module and its config:
    `4 * B * H * S_q * S_kv * D`. Shapes are usually fixed within a pipeline call, so one figure per
    (component, kind) is kept; a second, different figure is recorded too and reported as varying.
    """

    def __init__(self, pipe, family: Family):
        self._handles = []
        self.per_call: dict[tuple[str, str], set[int]] = {}
        for name in family.component_names:
            model = getattr(pipe, name)
            head_dim = int(model.config.attention_head_dim)
            for kind in family.kinds:
                for layer in range(family.num_layers(name, kind)):
                    module = model.get_submodule(family.module_path(name, kind, layer))
                    self._handles.append(module.register_forward_pre_hook(
                        self._hook(name, family.kind(kind), int(module.heads), head_dim), with_kwargs=True))

    def _hook(self, component: str, spec: AttentionKind, heads: int, head_dim: int):
        kind = spec.name

        def record(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            context = args[1] if len(args) > 1 else kwargs.get("encoder_hidden_states")
            batch = hidden.shape[0]
            q_tokens, kv_tokens = attention_tokens(spec, hidden, context)
            self.per_call.setdefault((component, kind), set()).add(
                attention_flops(batch, heads, q_tokens, kv_tokens, head_dim))
        return record

    def flops(self, component: str, kind: str) -> int:
        """FLOPs of one call of (component, kind); the largest when shapes varied, 0 if it never ran."""
        return max(self.per_call.get((component, kind), {0}))

    def varied(self) -> list[tuple[str, str]]:
        return sorted(key for key, values in self.per_call.items() if len(values) > 1)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> FlopCounter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
