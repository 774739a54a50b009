"""Offline tiny LTX-2 audio-video pipeline (text-to-video with audio), random weights.

`LTX2Pipeline` with a tiny `LTX2VideoTransformer3DModel` of the real block count (48 `transformer_blocks`, each
with the six attention modules), 2 heads x head dim 64 for the video and for the audio heads; a tiny Gemma3 text
tower (`Gemma3TextModel`, 2 layers: the pipeline stacks all 3 hidden states, so the connectors'
`text_proj_in_factor` is 3) over the byte-level tokenizer of runtime/models/_tiny_text.py (the pipeline pads it on
the left, as Gemma's), tiny `LTX2TextConnectors` (8 learnable registers: the 16 text tokens are a multiple), a
tiny video VAE that decodes at the released 32x spatial, 8x temporal (its compression ratios are given: diffusers
computes them from the encoder's settings), a tiny audio VAE (4 latent channels x 4 latent mel bins = 16 packed
audio channels) and a tiny vocoder. Tests call for latent output; `qcompile report` decodes.

64x64 pixels, 9 frames at 24 fps -> 2 latent frames x 2 x 2 = 8 video tokens; 9/24 s x 25 audio latents per second
-> 9 audio tokens; 16 text tokens. The pipeline's guidance defaults stay on: per step one batched CFG forward
(batch 2), one spatio-temporal-guidance forward and one modality-isolation forward (batch 1 each).
"""

from __future__ import annotations

from typing import Any

import torch

from runtime.models._tiny_text import TEXT_DIM, qwen_tokenizer

NUM_HEADS = 2
HEAD_DIM = 64
AUDIO_HEAD_DIM = 64
NUM_LAYERS = 48
HEIGHT = WIDTH = 64
NUM_FRAMES = 9
TEXT_TOKENS = 16
LATENT_CHANNELS = 8
AUDIO_LATENT_CHANNELS = 4
MEL_BINS = 16
TEXT_LAYERS = 2


def _text_encoder(vocab_size: int):
    from transformers import Gemma3TextConfig, Gemma3TextModel

    config = Gemma3TextConfig(vocab_size=vocab_size, hidden_size=TEXT_DIM, intermediate_size=37,
                              num_hidden_layers=TEXT_LAYERS, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                              max_position_embeddings=512, sliding_window=16)
    return Gemma3TextModel(config).eval()


def _connectors():
    from diffusers.pipelines.ltx2.connectors import LTX2TextConnectors

    return LTX2TextConnectors(
        caption_channels=TEXT_DIM, text_proj_in_factor=TEXT_LAYERS + 1, video_connector_num_attention_heads=2,
        video_connector_attention_head_dim=16, video_connector_num_layers=1, video_connector_num_learnable_registers=8,
        audio_connector_num_attention_heads=2, audio_connector_attention_head_dim=16, audio_connector_num_layers=1,
        audio_connector_num_learnable_registers=8,
    ).eval()


def _vae():
    from diffusers import AutoencoderKLLTX2Video

    return AutoencoderKLLTX2Video(
        latent_channels=LATENT_CHANNELS, block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 16, 32),
        layers_per_block=(1, 1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1),
        spatial_compression_ratio=32, temporal_compression_ratio=8,
    ).eval()


def _audio_vae():
    from diffusers import AutoencoderKLLTX2Audio

    # base_channels is also the width of the latents' mean/std: latent channels x latent mel bins (16 / 4)
    return AutoencoderKLLTX2Audio(base_channels=AUDIO_LATENT_CHANNELS * MEL_BINS // 4, ch_mult=(1, 2),
                                  num_res_blocks=1, latent_channels=AUDIO_LATENT_CHANNELS, mel_bins=MEL_BINS).eval()


def _vocoder():
    from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder

    # in: the audio VAE's decoded mel spectrogram, its 2 output channels x 16 mel bins
    return LTX2Vocoder(in_channels=2 * MEL_BINS, hidden_channels=8, upsample_kernel_sizes=[4], upsample_factors=[2],
                       resnet_kernel_sizes=[3], resnet_dilations=[[1]]).eval()


def _transformer(audio_channels: int):
    from diffusers import LTX2VideoTransformer3DModel

    return LTX2VideoTransformer3DModel(
        in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS, num_attention_heads=NUM_HEADS,
        attention_head_dim=HEAD_DIM, cross_attention_dim=NUM_HEADS * HEAD_DIM, audio_in_channels=audio_channels,
        audio_out_channels=audio_channels, audio_num_attention_heads=NUM_HEADS,
        audio_attention_head_dim=AUDIO_HEAD_DIM, audio_cross_attention_dim=NUM_HEADS * AUDIO_HEAD_DIM,
        num_layers=NUM_LAYERS, caption_channels=TEXT_DIM,
    ).eval()


def build_tiny_pipeline(seed: int = 0):
    """A tiny `LTX2Pipeline`; the scheduler shifts dynamically (the pipeline passes `mu`)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, LTX2Pipeline

    torch.manual_seed(seed)
    tokenizer = qwen_tokenizer()
    audio_vae = _audio_vae()
    audio_channels = AUDIO_LATENT_CHANNELS * (MEL_BINS // audio_vae.mel_compression_ratio)
    pipe = LTX2Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True), vae=_vae(), audio_vae=audio_vae,
        text_encoder=_text_encoder(len(tokenizer)), tokenizer=tokenizer, connectors=_connectors(),
        transformer=_transformer(audio_channels), vocoder=_vocoder(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_inputs(pipe, num_inference_steps: int = 4, seed: int = 0, **extra: Any) -> dict:
    """64x64 px, 9 frames, 16 text tokens, the pipeline's guidance defaults (CFG, STG, modality isolation),
    latent output (video and audio latents)."""
    kwargs: dict[str, Any] = dict(
        prompt="a red cube", negative_prompt="blurry", height=HEIGHT, width=WIDTH, num_frames=NUM_FRAMES,
        num_inference_steps=num_inference_steps, generator=torch.Generator("cpu").manual_seed(seed),
        max_sequence_length=TEXT_TOKENS, output_type="latent",
    )
    kwargs.update(extra)
    return kwargs
