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
from runtime.models.base import ModelSupport


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
