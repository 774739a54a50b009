"""Offline tiny Wan pipelines with random weights, shaped like the real families (same components, layer counts
and attention kinds; small widths from the family's `tiny` variant, head dim 64 so the FP8 path runs).

Nothing is downloaded: the text side is an in-memory Unigram T5 tokenizer and a tiny random T5 encoder.
`save_tiny_pipeline` / `load_tiny_pipeline` round-trip one through a folder with `from_pretrained`.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from qcompiler.families import Family, get_family

TINY_VARIANT = "tiny"
# Small sizes shared by every tiny pipeline; only the transformers' head layout comes from the family data.
TEXT_DIM = 32
TEXT_TOKENS = 16
FFN_DIM = 32
HEIGHT = WIDTH = 16
NUM_FRAMES = 9
LATENT_CHANNELS = 16


@dataclass(frozen=True)
class TinyInputs:
    """Keyword arguments for one tiny pipeline call (image only for image-to-video pipelines)."""

    kwargs: dict[str, Any]


def _tokenizer():
    from transformers import T5Tokenizer

    # An in-memory Unigram vocabulary: special tokens, the word-start marker, single characters and
    # word-start letters. Enough to tokenize any ASCII prompt without a download.
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(c, -3.0) for c in string.ascii_letters + string.digits + ".,!?'-"]
    pieces += [(f"\u2581{c}", -2.5) for c in string.ascii_lowercase]
    return T5Tokenizer(vocab=pieces, extra_ids=8)


def _text_encoder(vocab_size: int):
    from transformers import UMT5Config, UMT5EncoderModel

    # UMT5 is what the real Wan pipelines use; widths are tiny.
    config = UMT5Config(
        vocab_size=vocab_size,
        d_model=TEXT_DIM,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        decoder_start_token_id=0,
    )
    return UMT5EncoderModel(config).eval()


def _vae():
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(
        base_dim=3, z_dim=LATENT_CHANNELS, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    ).eval()


def _transformer(num_layers: int, num_heads: int, head_dim: int, in_channels: int):
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=num_heads,
        attention_head_dim=head_dim,
        in_channels=in_channels,
        out_channels=LATENT_CHANNELS,
        text_dim=TEXT_DIM,
        freq_dim=256,
        ffn_dim=FFN_DIM,
        num_layers=num_layers,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    ).eval()


def is_ti2v_style(family: Family) -> bool:
    """TI2V-5B feeds one timestep per token (`expand_timesteps`); no family field says so, the name does."""
    return "ti2v" in family.name


def tiny_family(family_name: str) -> Family:
    return get_family(family_name, TINY_VARIANT)


def build_tiny_pipeline(family_name: str, *, seed: int = 0, family: Family | None = None):
    """A diffusers pipeline of `family_name`'s tiny variant with seeded random weights.

    `family` overrides the looked-up family (e.g. one from $QCOMPILE_FAMILY_PATH with other widths).
    """
    from diffusers import UniPCMultistepScheduler, WanImageToVideoPipeline, WanPipeline

    family = family or tiny_family(family_name)
    image_to_video = family.pipeline_class == "WanImageToVideoPipeline"
    if family.pipeline_class not in ("WanPipeline", "WanImageToVideoPipeline"):
        raise ValueError(f"no tiny builder for pipeline class {family.pipeline_class} (family {family.name})")
    if image_to_video and family.boundary_ratio is None:
        # Wan2.1 I2V needs a CLIP image encoder and 512 text tokens (the processor hard-codes 512).
        raise ValueError(f"no tiny builder for {family.name}: Wan2.1-style I2V needs a CLIP image encoder")
    torch.manual_seed(seed)
    tokenizer = _tokenizer()
    text_encoder = _text_encoder(len(tokenizer))
    vae = _vae()
    # I2V conditions on 4 mask channels + 16 image-latent channels next to the 16 noise channels.
    in_channels = LATENT_CHANNELS + (LATENT_CHANNELS + 4 if image_to_video else 0)
    models = {
        # a Wan transformer has one block list
        c.name: _transformer(c.block_lists[0].length, c.num_heads, c.head_dim, in_channels) for c in family.components
    }
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        flow_shift=family.flow_shift,
        num_train_timesteps=family.num_train_timesteps,
    )
    common = dict(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        scheduler=scheduler,
        transformer=models["transformer"],
        transformer_2=models.get("transformer_2"),
        boundary_ratio=family.boundary_ratio,
    )
    if image_to_video:
        pipe = WanImageToVideoPipeline(image_encoder=None, image_processor=None, **common)
    else:
        pipe = WanPipeline(expand_timesteps=is_ti2v_style(family), **common)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_inputs(pipe, *, num_inference_steps: int = 4, guidance_scale: float = 5.0, seed: int = 0, **extra: Any) -> dict:
    """Call arguments for a tiny pipeline: 16x16, 9 frames, 16 text tokens, latent output, seeded."""
    from diffusers import WanImageToVideoPipeline

    prompt_embeds, negative_prompt_embeds = encode_prompts(pipe, "a red cube on a table", "blurry")
    kwargs: dict[str, Any] = dict(
        prompt_embeds=prompt_embeds,
        negative_prompt_embeds=negative_prompt_embeds,
        height=HEIGHT,
        width=WIDTH,
        num_frames=NUM_FRAMES,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        generator=torch.Generator("cpu").manual_seed(seed),
        max_sequence_length=TEXT_TOKENS,
        output_type="latent",
    )
    if isinstance(pipe, WanImageToVideoPipeline):
        from PIL import Image

        kwargs["image"] = Image.new("RGB", (WIDTH, HEIGHT), (120, 60, 200))
    kwargs.update(extra)
    return kwargs


def encode_prompts(pipe, prompt: str, negative_prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """T5 embeddings as diffusers' Wan pipelines make them (padding tokens zeroed), without its text cleaning.

    diffusers 0.42.1's I2V pipeline calls `ftfy` unconditionally when given a prompt string; passing
    embeddings keeps the tiny pipelines free of that optional dependency.
    """
    embeds = []
    for text in (prompt, negative_prompt):
        tokens = pipe.tokenizer(
            [text], padding="max_length", max_length=TEXT_TOKENS, truncation=True, add_special_tokens=True,
            return_attention_mask=True, return_tensors="pt",
        )
        mask = tokens.attention_mask
        with torch.no_grad():
            hidden = pipe.text_encoder(tokens.input_ids, mask).last_hidden_state
        embeds.append(hidden * mask.unsqueeze(-1).to(hidden.dtype))
    return embeds[0], embeds[1]


def run_tiny(pipe, **kwargs: Any) -> torch.Tensor:
    """Run a tiny pipeline and return its output frames (latents unless output_type says otherwise)."""
    with torch.no_grad():
        return pipe(**tiny_inputs(pipe, **kwargs)).frames


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
