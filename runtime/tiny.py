"""Tiny offline pipelines with random weights, shaped like the real families (same components, layer counts
and attention kinds; small widths from the family's `tiny` variant, head dim 64 so the FP8 path runs).

Nothing is downloaded. The builder, prompt encoding and conditioning inputs of each pipeline class live in its
model module (runtime/models/<model>.py), found by the family's pipeline or model class; this module only picks
the family and the sizes every tiny run shares. `save_tiny_pipeline` / `load_tiny_pipeline` round-trip one
through a folder with `from_pretrained`.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch

from qcompiler.families import Family, get_family
from runtime.models import model_support, support_for_family
from runtime.models.base import DEFAULT_NEGATIVE_PROMPT, DEFAULT_PROMPT

TINY_VARIANT = "tiny"


def tiny_family(family_name: str) -> Family:
    return get_family(family_name, TINY_VARIANT)


def build_tiny_pipeline(family_name: str, *, seed: int = 0, family: Family | None = None):
    """A diffusers pipeline of `family_name`'s tiny variant with seeded random weights, built by the model module
    of its pipeline class from the family data (layer counts, heads, scheduler).

    `family` overrides the looked-up family (e.g. one from $QCOMPILE_FAMILY_PATH with other widths).
    """
    family = family or tiny_family(family_name)
    return support_for_family(family).build_tiny(family, seed=seed)


def text_tokens(pipe) -> int:
    """Text tokens of a tiny pipeline's calls (the model module's tiny sequence length)."""
    return model_support(pipe).text_tokens(pipe, tiny=True)


def tiny_inputs(pipe, *, num_inference_steps: int = 4, guidance_scale: float = 5.0, seed: int = 0, **extra: Any) -> dict:
    """Call arguments for a tiny pipeline: the model module's tiny size (`sample_size`; `sample_frames` for a
    pipeline that takes `num_frames`, Wan's 16x16 and 9 frames), the tiny text length, latent output."""
    support = model_support(pipe)
    video = "num_frames" in inspect.signature(type(pipe).__call__).parameters
    height, width = support.sample_size
    kwargs = support.call_kwargs(
        pipe, prompt=DEFAULT_PROMPT, negative_prompt=DEFAULT_NEGATIVE_PROMPT, height=height, width=width,
        num_frames=support.sample_frames if video else None, steps=num_inference_steps,
        guidance_scale=guidance_scale, seed=seed, max_length=text_tokens(pipe), output_type="latent")
    kwargs.update(extra)
    return kwargs


def encode_prompts(pipe, prompt: str, negative_prompt: str, max_length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt embeddings as the pipeline makes them (the model module's encoder), at the tiny text length."""
    return model_support(pipe).encode_prompts(pipe, prompt, negative_prompt, max_length or text_tokens(pipe))


def run_tiny(pipe, **kwargs: Any) -> torch.Tensor:
    """Run a tiny pipeline and return its output (video frames or images; latents unless output_type says
    otherwise)."""
    with torch.no_grad():
        return pipe(**tiny_inputs(pipe, **kwargs))[0]


def save_tiny_pipeline(pipe, folder: str | Path) -> Path:
    """Save with `save_pretrained`; load it back with `load_tiny_pipeline` (or diffusers' `from_pretrained`)."""
    folder = Path(folder)
    pipe.save_pretrained(folder)
    return folder


def load_tiny_pipeline(folder: str | Path):
    """Load a saved tiny pipeline offline (`DiffusionPipeline.from_pretrained` on a local folder)."""
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(str(folder), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe
