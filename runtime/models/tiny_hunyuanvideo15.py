"""Offline tiny HunyuanVideo-1.5 pipeline (text-to-video), random weights.

`HunyuanVideo15Pipeline` with a tiny `HunyuanVideo15Transformer3DModel` of the real block counts (54 dual-stream
`transformer_blocks`, joint attention; a 2-block token refiner `context_embedder.token_refiner.refiner_blocks`),
2 heads x head dim 64; a tiny `Qwen2_5_VLTextModel` with a byte-level BPE tokenizer (no merges, a short chat
template), a tiny ByT5 (`T5EncoderModel` + `ByT5Tokenizer`), a tiny `AutoencoderKLHunyuanVideo15`, and the
`ClassifierFreeGuidance` guider (separate conditional and unconditional forwards).

The real text lengths (1000 Qwen tokens after a 108-token system prompt, 256 ByT5 tokens, 729 image tokens) are
instance attributes of the pipeline, not config; the tiny pipeline sets them small (not saved with
`save_pretrained`): 32 Qwen tokens, 8 ByT5 tokens, 4 image tokens -> a joint call over 48 video + 44 text-side
tokens, most of them padding (the joint mask is always passed).
16x16 pixels, 9 frames -> 3 latent frames x 4x4 (4x spatial, 4x temporal compression) = 48 video tokens.
"""

from __future__ import annotations

from typing import Any

import torch

from runtime.models._tiny_text import TEXT_DIM, qwen25vl_text_config, qwen_tokenizer

NUM_HEADS = 2
HEAD_DIM = 64
NUM_LAYERS = 54
NUM_REFINER_LAYERS = 2
HEIGHT = WIDTH = 16
NUM_FRAMES = 9
LATENT_CHANNELS = 4
TEXT_TOKENS = 32
BYT5_TOKENS = 8
IMAGE_TOKENS = 4
SYSTEM_MESSAGE = "Describe the video."


def _text_encoder(tokenizer):
    from transformers import Qwen2_5_VLTextConfig, Qwen2_5_VLTextModel

    return Qwen2_5_VLTextModel(Qwen2_5_VLTextConfig(**qwen25vl_text_config(len(tokenizer)))).eval()


def _byt5():
    from transformers import ByT5Tokenizer, T5Config, T5EncoderModel

    tokenizer = ByT5Tokenizer()
    config = T5Config(vocab_size=len(tokenizer), d_model=TEXT_DIM, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                      relative_attention_num_buckets=8, decoder_start_token_id=0)
    return tokenizer, T5EncoderModel(config).eval()


def _vae():
    from diffusers import AutoencoderKLHunyuanVideo15

    return AutoencoderKLHunyuanVideo15(latent_channels=LATENT_CHANNELS, block_out_channels=(8, 8, 8),
                                       layers_per_block=1, spatial_compression_ratio=4,
                                       temporal_compression_ratio=4).eval()


def _transformer():
    from diffusers import HunyuanVideo15Transformer3DModel

    return HunyuanVideo15Transformer3DModel(
        # latents + conditioning latents + 1 mask channel, as the pipeline concatenates them.
        in_channels=2 * LATENT_CHANNELS + 1, out_channels=LATENT_CHANNELS, num_attention_heads=NUM_HEADS,
        attention_head_dim=HEAD_DIM, num_layers=NUM_LAYERS, num_refiner_layers=NUM_REFINER_LAYERS,
        text_embed_dim=TEXT_DIM, text_embed_2_dim=TEXT_DIM, image_embed_dim=16, rope_axes_dim=(16, 24, 24),
        task_type="t2v",
    ).eval()


def build_tiny_pipeline(seed: int = 0):
    """A tiny `HunyuanVideo15Pipeline` (text-to-video; the guider runs one forward per CFG branch)."""
    from diffusers import ClassifierFreeGuidance, FlowMatchEulerDiscreteScheduler, HunyuanVideo15Pipeline

    torch.manual_seed(seed)
    tokenizer = qwen_tokenizer()
    tokenizer_2, text_encoder_2 = _byt5()
    pipe = HunyuanVideo15Pipeline(
        text_encoder=_text_encoder(tokenizer), tokenizer=tokenizer, transformer=_transformer(), vae=_vae(),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0), text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2, guider=ClassifierFreeGuidance(guidance_scale=6.0),
    )
    pipe.system_message = SYSTEM_MESSAGE
    pipe.prompt_template_encode_start_idx = len(
        tokenizer(f"<|im_start|>system\n{SYSTEM_MESSAGE}<|im_end|>\n<|im_start|>user\n").input_ids)
    pipe.tokenizer_max_length = TEXT_TOKENS
    pipe.tokenizer_2_max_length = BYT5_TOKENS
    pipe.vision_num_semantic_tokens = IMAGE_TOKENS
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_inputs(pipe, num_inference_steps: int = 4, seed: int = 0, **extra: Any) -> dict:
    """16x16 px, 9 frames, a negative prompt (the guider's unconditional branch), latent output.

    The prompt quotes a word so ByT5 encodes glyph text (without quotes its tokens are all padding).
    """
    kwargs: dict[str, Any] = dict(
        prompt='a sign saying "hi"', negative_prompt="blurry", height=HEIGHT, width=WIDTH, num_frames=NUM_FRAMES,
        num_inference_steps=num_inference_steps, generator=torch.Generator("cpu").manual_seed(seed),
        output_type="latent",
    )
    kwargs.update(extra)
    return kwargs
