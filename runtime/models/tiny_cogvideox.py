"""Offline tiny CogVideoX pipelines (2B and 5B), random weights.

`CogVideoXPipeline` with a tiny `CogVideoXTransformer3DModel` of the real block count (2B: 30, 5B: 42
`transformer_blocks`), 2 heads x head dim 64; a tiny T5 encoder with an in-memory tokenizer; a tiny
`AutoencoderKLCogVideoX`. 2B: sin-cos positions, `CogVideoXDDIMScheduler`; 5B: 3D RoPE,
`CogVideoXDPMScheduler` (its `step` takes `generator`: the pipeline passes it only if the signature says so).
32x32 pixels, 9 frames -> 3 latent frames x 2x2 patches = 12 video tokens; 16 text tokens.
"""

from __future__ import annotations

from typing import Any

import torch

from runtime.models._tiny_text import TEXT_DIM, t5_encoder, t5_tokenizer

NUM_HEADS = 2
HEAD_DIM = 64
NUM_LAYERS = {"2b": 30, "5b": 42}
HEIGHT = WIDTH = 32
NUM_FRAMES = 9
TEXT_TOKENS = 16
LATENT_CHANNELS = 4


def _vae():
    from diffusers import AutoencoderKLCogVideoX

    return AutoencoderKLCogVideoX(
        in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * 4,
        up_block_types=("CogVideoXUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), latent_channels=LATENT_CHANNELS,
        layers_per_block=1, norm_num_groups=2, temporal_compression_ratio=4,
    ).eval()


def _transformer(variant: str):
    from diffusers import CogVideoXTransformer3DModel

    return CogVideoXTransformer3DModel(
        num_attention_heads=NUM_HEADS, attention_head_dim=HEAD_DIM, in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS, time_embed_dim=32, text_embed_dim=TEXT_DIM, num_layers=NUM_LAYERS[variant],
        sample_width=WIDTH // 8, sample_height=HEIGHT // 8, sample_frames=NUM_FRAMES, patch_size=2,
        temporal_compression_ratio=4, max_text_seq_length=TEXT_TOKENS,
        use_rotary_positional_embeddings=variant == "5b",
    ).eval()


def _scheduler(variant: str):
    from diffusers import CogVideoXDDIMScheduler, CogVideoXDPMScheduler

    # The released CogVideoX-2b / -5b scheduler configs: v-prediction, zero-SNR rescaled betas, trailing spacing.
    common = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                  prediction_type="v_prediction", rescale_betas_zero_snr=True, set_alpha_to_one=True,
                  timestep_spacing="trailing")
    if variant == "2b":
        return CogVideoXDDIMScheduler(snr_shift_scale=3.0, **common)
    return CogVideoXDPMScheduler(snr_shift_scale=1.0, **common)


def build_tiny_pipeline(seed: int = 0, variant: str = "2b"):
    """A tiny `CogVideoXPipeline`: variant "2b" (30 blocks, DDIM) or "5b" (42 blocks, RoPE, DPM)."""
    from diffusers import CogVideoXPipeline

    if variant not in NUM_LAYERS:
        raise ValueError(f"unknown CogVideoX variant {variant!r}; use one of {', '.join(NUM_LAYERS)}")
    torch.manual_seed(seed)
    tokenizer = t5_tokenizer()
    pipe = CogVideoXPipeline(tokenizer=tokenizer, text_encoder=t5_encoder(len(tokenizer)), vae=_vae(),
                             transformer=_transformer(variant), scheduler=_scheduler(variant))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_inputs(pipe, num_inference_steps: int = 4, seed: int = 0, **extra: Any) -> dict:
    """32x32 px, 9 frames, 16 text tokens, batched CFG (guidance 6 with a negative prompt), latent output.

    eta=1.0 makes the 5B's DPM step draw noise from `generator` (pipelines pass it only if `step` names it).
    """
    kwargs: dict[str, Any] = dict(
        prompt="a red cube", negative_prompt="blurry", height=HEIGHT, width=WIDTH, num_frames=NUM_FRAMES,
        num_inference_steps=num_inference_steps, guidance_scale=6.0, max_sequence_length=TEXT_TOKENS, eta=1.0,
        generator=torch.Generator("cpu").manual_seed(seed), output_type="latent",
    )
    kwargs.update(extra)
    return kwargs
