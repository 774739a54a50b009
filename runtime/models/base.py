"""What the runtime needs to know about a diffusers model that the family data cannot say: the code half of a family.

A family file (qcompiler/families/data/*.json) says where the attention modules are and how many; a
`ModelSupport`, registered by diffusers model and pipeline class names (runtime/models/__init__.py), says:
- how a transformer forward maps to a CFG branch (`branch`; the step comes from the scheduler, see
  runtime/step_tracker.py);
- the processor classes its attention modules run (`processor_classes`), for the self-check. How their calls are
  reached is decided per attention module by its processor (runtime/install.py), not per model, since one model
  may mix both: DISPATCHER, the processor calls diffusers' `dispatch_attention_fn` and qcompile's backend is
  installed on it (runtime/dispatch.py); PROCESSOR, the processor calls `F.scaled_dot_product_attention` itself
  (CogVideoX, HunyuanVideo-1.5's token refiner; Mochi, once per sample) and hooks on its attention module send
  those calls to the same site (runtime/processor_entry.py); any other processor is refused;
- what the pipeline's loop sets its current timestep to at each step (`current_timesteps`: the step tracker's
  cross-check; Mochi's `1000 - t`);
- the mask policy (`masked_kinds`, `mask_policy`): which kinds' calls carry an attention mask, and what runs them;
- the tiny offline pipeline, the call arguments and prompt encoding the quality tools and tests share;
- the processor classes whose private attributes the runtime relies on (runtime/diffusers_private.py's self-check).

The base class holds the defaults (one forward per CFG branch, cond first, no masks);
a model module overrides only what differs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from qcompiler.errors import QcompileError

COND, UNCOND, BATCHED = "cond", "uncond", "cond+uncond"
DISPATCHER, PROCESSOR = "dispatcher", "processor"  # the two attention entries (runtime/install.py)
# Mask policies (`ModelSupport.mask_policy`), what runtime/dispatch.py does with a planned-quantized call's mask:
# MASK_PACK, a padding mask (key padding, the outer-product self-attention mask, a bias that provably drops keys:
# runtime/masks.py) runs quantized over each sample's valid tokens, and any other mask follows the plan's fallback
# policy (`native`: the stock attention with the mask, counted as fallback; `error`: UnservableCallError);
# MASK_FALLBACK, the model's masks are never padding: every masked call follows the plan's fallback policy.
# Under context parallelism masked calls run the stock attention, counted as fallback, under either. The policy is
# a declaration (docs, tests): runtime/dispatch.py decides per call from the mask itself.
MASK_PACK = "pack"
MASK_FALLBACK = "fallback"

DEFAULT_PROMPT = "a red cube on a table"
DEFAULT_NEGATIVE_PROMPT = "blurry"


class ModelSupportError(QcompileError, ValueError):
    """No model module serves this pipeline or family for what was asked (e.g. no tiny builder)."""


class ModelSupport:
    """Defaults for a model with separate cond/uncond forwards and no masks; subclass per model."""

    name: ClassVar[str] = "default"
    model_classes: ClassVar[tuple[str, ...]] = ()  # diffusers model classes (the family's `diffusers_class`)
    pipeline_classes: ClassVar[tuple[str, ...]] = ()  # diffusers pipeline classes (the family's `pipeline_class`)
    # family pipeline class -> other pipeline classes that run the same transformer in the same denoising loop
    same_transformer_pipelines: ClassVar[Mapping[str, tuple[str, ...]]] = {}
    masked_kinds: ClassVar[tuple[str, ...]] = ()  # kinds whose calls carry an attention mask
    mask_policy: ClassVar[str] = MASK_PACK

    # -- per forward ----------------------------------------------------------------------------------
    def branch(self, forward_in_step: int) -> str:
        """The CFG branch of the `forward_in_step`-th (1-based) transformer forward of one denoising step."""
        return COND if forward_in_step == 1 else UNCOND

    # -- private API the runtime relies on --------------------------------------------------------------
    def processor_classes(self) -> tuple[type, ...]:
        """The attention processor classes of this model (checked by diffusers_private.check_private_api)."""
        return ()

    def current_timesteps(self, timesteps: Any) -> Any:
        """What the pipeline's denoising loop sets its current timestep to at each step of the scheduler's
        `timesteps` (a tensor, same op as the loop's, so the values match bit for bit): the step tracker's
        cross-check (runtime/step_tracker.py). Default: the timestep itself."""
        return timesteps

    def pipeline_types(self) -> tuple[type, ...]:
        """The pipeline classes served, whose `__call__` the self-check reads (it must set `_current_timestep`)."""
        return ()

    # -- tiny offline pipelines -----------------------------------------------------------------------
    def build_tiny(self, family: Any, *, seed: int = 0) -> Any:
        """A pipeline of `family` (a tiny variant) with seeded random weights, nothing downloaded."""
        raise ModelSupportError(f"no tiny builder for {family.pipeline_class} (family {family.name}): "
                                f"{self.name} model support has none")

    # -- call arguments (tiny runs, report, calibrate) -------------------------------------------------
    # The size of a run when the caller gives none (`qcompile report`/`calibrate`): the tiny pipeline's. Frames
    # only count for a family that generates video (its family file: a `frames` rule or `video` tokens,
    # qcompiler.cli.run_options.generates_video); an image family's calls get num_frames None.
    sample_size: ClassVar[tuple[int, int]] = (16, 16)  # (height, width) in pixels
    sample_frames: ClassVar[int] = 9

    def text_tokens(self, pipe: Any, *, tiny: bool) -> int | None:
        """Text sequence length of the calls (`max_sequence_length`); None: the pipeline's own default."""
        return None

    def encode_prompts(self, pipe: Any, prompt: str, negative_prompt: str, max_length: int) -> tuple[Any, Any]:
        """(prompt embeddings, negative prompt embeddings) as the pipeline itself would make them (Wan's shape;
        other models encode inside `call_kwargs`, each with its pipeline's own embedding arguments)."""
        raise ModelSupportError(f"{type(pipe).__name__}: {self.name} model support encodes no prompts")

    def conditioning(self, pipe: Any, *, height: int, width: int, num_frames: int | None) -> dict[str, Any]:
        """Extra call arguments of this pipeline class (e.g. a fixed test image for image-to-video); keys
        mapped to None are removed from the call."""
        return {}

    def call_kwargs(self, pipe: Any, *, prompt: str = DEFAULT_PROMPT, negative_prompt: str = DEFAULT_NEGATIVE_PROMPT,
                    height: int, width: int, num_frames: int | None, steps: int, guidance_scale: float, seed: int,
                    max_length: int | None, output_type: str) -> dict[str, Any]:
        """Arguments of one pipeline call, in this pipeline's own terms: encoded prompts, a seeded CPU generator,
        the size, and what `guidance_scale` means for it (CFG scale, true-CFG scale or distilled guidance).

        The same request serves every model: `num_frames` is None for an image model (a video model takes its
        `sample_frames` then); `negative_prompt` is used where the pipeline runs an unconditional branch;
        `max_length` None is the module's `text_tokens` for a real pipeline. A model module whose pipeline takes
        other arguments overrides this (runtime/models/flux.py, qwenimage.py, ltx.py); this default serves the
        video pipelines that take `prompt_embeds` / `negative_prompt_embeds` from the module's `encode_prompts`
        (no text-cleaning dependency) and `num_frames`, plus their `conditioning` (Wan, CogVideoX)."""
        if type(self).encode_prompts is ModelSupport.encode_prompts:
            raise self.no_call_arguments(pipe)
        max_length = max_length or self.text_tokens(pipe, tiny=False)
        num_frames = num_frames or self.sample_frames
        positive, negative = self.encode_prompts(pipe, prompt, negative_prompt, max_length)
        kwargs: dict[str, Any] = dict(
            prompt_embeds=positive,
            negative_prompt_embeds=negative,
            height=height,
            width=width,
            num_frames=num_frames,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            generator=self.generator(seed),
            max_sequence_length=max_length,
            output_type=output_type,
        )
        for key, value in self.conditioning(pipe, height=height, width=width, num_frames=num_frames).items():
            if value is None:
                kwargs.pop(key, None)
            else:
                kwargs[key] = value
        return kwargs

    def has_call_arguments(self) -> bool:
        """Whether this model module says how its pipeline is called (`call_kwargs`, or `encode_prompts` for the
        default's embeddings)."""
        return (type(self).call_kwargs is not ModelSupport.call_kwargs
                or type(self).encode_prompts is not ModelSupport.encode_prompts)

    def no_call_arguments(self, pipe: Any) -> ModelSupportError:
        return ModelSupportError(
            f"{type(pipe).__name__}: {self.name} model support has no call arguments (how to pass the prompt, size "
            "and guidance to this pipeline), so `qcompile report` and `calibrate` cannot run it; add `call_kwargs` "
            "to its model module in runtime/models/")

    @staticmethod
    def generator(seed: int) -> Any:
        """The seeded CPU generator every call uses (CPU: the same noise on any device)."""
        import torch

        return torch.Generator("cpu").manual_seed(seed)
