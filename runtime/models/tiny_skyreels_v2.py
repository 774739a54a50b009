"""Offline tiny SkyReels-V2 pipelines (text-to-video and diffusion forcing), random weights.

`SkyReelsV2Pipeline` / `SkyReelsV2DiffusionForcingPipeline` with a tiny `SkyReelsV2Transformer3DModel` of the real
block count (40 `blocks`, each `attn1` self and `attn2` cross), 2 heads x head dim 64, a tiny UMT5 encoder over the
in-memory T5 tokenizer and the tiny Wan VAE (runtime/models/wan.py's, the same `AutoencoderKLWan` class).
16x16 pixels, 9 frames -> 3 latent frames of 1x1 patches (8x spatial, 4x temporal VAE, 2x2 patches) = 3 video
tokens, 16 text tokens. Neither transformer has the fps embedding (`inject_sample_info=False`, as the 14B
checkpoints; the DF 1.3B has it): the diffusion-forcing pipeline passes `fps`, which the model then ignores.
"""

from __future__ import annotations

from typing import Any

import torch

from runtime.models.wan import FFN_DIM, LATENT_CHANNELS, TEXT_DIM, _text_encoder, _tokenizer, _vae

NUM_HEADS = 2
HEAD_DIM = 64
NUM_LAYERS = 40
HEIGHT = WIDTH = 16
NUM_FRAMES = 9
TEXT_TOKENS = 16
FLOW_SHIFT = 8.0


def _transformer():
    from diffusers import SkyReelsV2Transformer3DModel

    return SkyReelsV2Transformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=NUM_HEADS, attention_head_dim=HEAD_DIM,
        in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS, text_dim=TEXT_DIM, freq_dim=256, ffn_dim=FFN_DIM,
        num_layers=NUM_LAYERS, cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
        inject_sample_info=False,
    ).eval()


def build_tiny_pipeline(seed: int = 0, *, diffusion_forcing: bool = False):
    """A tiny `SkyReelsV2Pipeline`, or with `diffusion_forcing` a tiny `SkyReelsV2DiffusionForcingPipeline`."""
    from diffusers import SkyReelsV2DiffusionForcingPipeline, SkyReelsV2Pipeline, UniPCMultistepScheduler

    torch.manual_seed(seed)
    tokenizer = _tokenizer()
    cls = SkyReelsV2DiffusionForcingPipeline if diffusion_forcing else SkyReelsV2Pipeline
    pipe = cls(tokenizer=tokenizer, text_encoder=_text_encoder(len(tokenizer)), vae=_vae(),
               transformer=_transformer(),
               scheduler=UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                                 flow_shift=FLOW_SHIFT, num_train_timesteps=1000))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def encode(pipe, text: str, max_length: int = TEXT_TOKENS) -> torch.Tensor:
    """UMT5 embeddings as the pipeline makes them (padding zeroed), without its text cleaning: diffusers 0.42.1's
    SkyReels-V2 pipelines call `ftfy` unconditionally on a prompt string."""
    tokens = pipe.tokenizer([text], padding="max_length", max_length=max_length, truncation=True,
                            add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
    device = pipe.text_encoder.device
    mask = tokens.attention_mask.to(device)
    with torch.no_grad():
        hidden = pipe.text_encoder(tokens.input_ids.to(device), mask).last_hidden_state
    return hidden * mask.unsqueeze(-1).to(hidden.dtype)


def tiny_inputs(pipe, num_inference_steps: int = 4, seed: int = 0, **extra: Any) -> dict:
    """16x16 px, 9 frames, 16 text tokens (encoded here), CFG on (cond and uncond forwards), latent output."""
    kwargs: dict[str, Any] = dict(
        prompt=None, prompt_embeds=encode(pipe, "a red cube"), negative_prompt_embeds=encode(pipe, "blurry"), height=HEIGHT,
        width=WIDTH, num_frames=NUM_FRAMES,
        num_inference_steps=num_inference_steps, guidance_scale=6.0,
        generator=torch.Generator("cpu").manual_seed(seed), max_sequence_length=TEXT_TOKENS, output_type="latent",
    )
    kwargs.update(extra)
    return kwargs
