"""Flux.1 dev and schnell (FluxTransformer2DModel in FluxPipeline).

What the Flux family files cannot say as data:
- guidance-distilled: one transformer forward per denoising step serves the prompt (the base class's branch
  mapping: the first forward of a step is cond); with `true_cfg_scale > 1` and a negative prompt the pipeline
  runs a second, unconditional forward, as the default mapping says;
- FluxAttnProcessor calls diffusers' `dispatch_attention_fn` (both block lists, joint and single): qcompile's
  backend is installed on the processor, no attention call carries a mask;
- the tiny offline pipeline is runtime/models/tiny_flux.py's (sizes fixed there: the family's `tiny` variant).
"""

from __future__ import annotations

from typing import Any

from runtime.models import register
from runtime.models._fixed_tiny import check_tiny_fits
from runtime.models.base import DEFAULT_NEGATIVE_PROMPT, DEFAULT_PROMPT, ModelSupport, ModelSupportError

REAL_TEXT_TOKENS = 512  # FluxPipeline's max_sequence_length default (T5)


@register
class FluxSupport(ModelSupport):
    name = "flux"
    model_classes = ("FluxTransformer2DModel",)
    pipeline_classes = ("FluxPipeline",)

    def processor_classes(self) -> tuple[type, ...]:
        from diffusers.models.transformers.transformer_flux import FluxAttnProcessor

        return (FluxAttnProcessor,)

    def pipeline_types(self) -> tuple[type, ...]:
        from diffusers import FluxPipeline

        return (FluxPipeline,)

    def build_tiny(self, family: Any, *, seed: int = 0) -> Any:
        from runtime.models import tiny_flux

        # schnell: no guidance embedding and a static shift; the family name is what tells them apart
        variant = "schnell" if "schnell" in family.name else "dev"
        return check_tiny_fits(tiny_flux.build_tiny_pipeline(seed, variant=variant), family, "tiny_flux")

    # -- call arguments (report, calibrate) ------------------------------------------------------------
    def text_tokens(self, pipe: Any, *, tiny: bool) -> int | None:
        from runtime.models import tiny_flux

        return tiny_flux.TEXT_TOKENS if tiny else REAL_TEXT_TOKENS

    def call_kwargs(self, pipe: Any, *, prompt: str = DEFAULT_PROMPT, negative_prompt: str = DEFAULT_NEGATIVE_PROMPT,
                    height: int, width: int, num_frames: int | None, steps: int, guidance_scale: float, seed: int,
                    max_length: int | None, output_type: str) -> dict[str, Any]:
        """Guidance-distilled: `guidance_scale` is the guidance embedded into the transformer (dev; schnell embeds
        none and ignores it), not CFG; no negative prompt (true_cfg_scale stays 1), so one forward per step.
        The CLIP pooled and T5 sequence embeddings are encoded once here, as the pipeline would."""
        import torch

        _no_frames(pipe, num_frames)
        max_length = max_length or self.text_tokens(pipe, tiny=False)
        with torch.no_grad():
            embeds, pooled, _ = pipe.encode_prompt(prompt=prompt, prompt_2=None, device=pipe._execution_device,
                                                   max_sequence_length=max_length)
        return dict(prompt_embeds=embeds, pooled_prompt_embeds=pooled, height=height, width=width,
                    num_inference_steps=steps, guidance_scale=guidance_scale, generator=self.generator(seed),
                    max_sequence_length=max_length, output_type=output_type)

def _no_frames(pipe: Any, num_frames: int | None) -> None:
    if num_frames is not None:
        raise ModelSupportError(f"{type(pipe).__name__} generates images: num_frames={num_frames} does not apply "
                                "(pass num_frames=None)")
