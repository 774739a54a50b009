"""Offline tiny Flux.1 pipelines (dev: guidance-embedded; schnell: no guidance embedding), random weights.

`FluxPipeline` with a tiny `FluxTransformer2DModel` of the real block counts (19 dual-stream
`transformer_blocks` + 38 single-stream `single_transformer_blocks`), 2 heads x head dim 64; a tiny CLIP text
encoder (pooled projection) and a tiny T5 encoder (sequence), tokenizers built in memory, a tiny `AutoencoderKL`.
16x16 pixels -> 8x8 latents -> 4x4 packed = 16 image tokens; 16 T5 text tokens.
"""

from __future__ import annotations

from typing import Any

import torch

from runtime.models._tiny_text import TEXT_DIM, clip_text_encoder, clip_tokenizer, t5_encoder, t5_tokenizer

NUM_HEADS = 2
HEAD_DIM = 64
NUM_LAYERS = 19
NUM_SINGLE_LAYERS = 38
HEIGHT = WIDTH = 16
TEXT_TOKENS = 16
VARIANTS = ("dev", "schnell")


def _vae():
    from diffusers import AutoencoderKL

    # One down block pair -> vae_scale_factor 2; Flux packs 2x2 latent patches, so 16 px -> 4x4 tokens.
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(4, 4), layers_per_block=1,
                         latent_channels=4, norm_num_groups=2, sample_size=HEIGHT, use_quant_conv=False,
                         use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035).eval()


def _transformer(guidance_embeds: bool):
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=NUM_LAYERS, num_single_layers=NUM_SINGLE_LAYERS,
        attention_head_dim=HEAD_DIM, num_attention_heads=NUM_HEADS, joint_attention_dim=TEXT_DIM,
        pooled_projection_dim=TEXT_DIM, guidance_embeds=guidance_embeds, axes_dims_rope=(16, 24, 24),
    ).eval()


def build_tiny_pipeline(seed: int = 0, variant: str = "dev"):
    """A tiny `FluxPipeline`; `variant` "dev" embeds the guidance scale, "schnell" does not (as the real ones)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    if variant not in VARIANTS:
        raise ValueError(f"unknown Flux variant {variant!r}; use one of {', '.join(VARIANTS)}")
    torch.manual_seed(seed)
    tokenizer = clip_tokenizer()
    tokenizer_2 = t5_tokenizer()
    # dev: dynamic shifting from the image sequence length; schnell: fixed shift 1.0, no dynamic shifting.
    scheduler = (FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                 base_image_seq_len=256, max_image_seq_len=4096)
                 if variant == "dev" else FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False))
    pipe = FluxPipeline(
        scheduler=scheduler, vae=_vae(), text_encoder=clip_text_encoder(len(tokenizer)), tokenizer=tokenizer,
        text_encoder_2=t5_encoder(len(tokenizer_2)), tokenizer_2=tokenizer_2,
        transformer=_transformer(guidance_embeds=variant == "dev"),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_inputs(pipe, num_inference_steps: int = 4, seed: int = 0, **extra: Any) -> dict:
    """16x16 px, 16 text tokens, one forward per step (guidance-distilled: no negative prompt), latent output."""
    kwargs: dict[str, Any] = dict(
        prompt="a red cube", height=HEIGHT, width=WIDTH, num_inference_steps=num_inference_steps,
        guidance_scale=3.5, max_sequence_length=TEXT_TOKENS,
        generator=torch.Generator("cpu").manual_seed(seed), output_type="latent",
    )
    kwargs.update(extra)
    return kwargs
