"""Tiny offline tokenizers and text encoders shared by the tiny family pipelines (runtime/models/tiny_*.py).

Nothing is downloaded: vocabularies are built in memory (single characters, no merges), encoders are random from
small configs. Widths are tiny; the token counts they produce are what the tiny pipelines' callers control.
"""

from __future__ import annotations

import string

TEXT_DIM = 32


def t5_tokenizer():
    """A Unigram T5 tokenizer over single characters (as runtime/models/wan.py builds for Wan, plus `"`)."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(c, -3.0) for c in string.ascii_letters + string.digits + ".,!?'-\""]
    pieces += [(f"\u2581{c}", -2.5) for c in string.ascii_lowercase]
    return T5Tokenizer(vocab=pieces, extra_ids=8)


def t5_encoder(vocab_size: int, d_model: int = TEXT_DIM):
    from transformers import T5Config, T5EncoderModel

    config = T5Config(vocab_size=vocab_size, d_model=d_model, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                      relative_attention_num_buckets=8, decoder_start_token_id=0)
    return T5EncoderModel(config).eval()


def _byte_chars() -> list[str]:
    # GPT-2's byte-to-unicode table: the alphabet of byte-level BPE vocabularies.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + list(range(ord("\xae"), 256))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def clip_tokenizer(max_length: int = 77):
    """A CLIP BPE tokenizer with no merges: every character is a token (word-final ones carry `</w>`)."""
    from transformers import CLIPTokenizer

    chars = _byte_chars()
    tokens = ["<|startoftext|>", "<|endoftext|>"] + chars + [c + "</w>" for c in chars]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[], model_max_length=max_length)


def clip_text_encoder(vocab_size: int, hidden: int = TEXT_DIM):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=37, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=77, projection_dim=hidden,
                            bos_token_id=0, eos_token_id=1, pad_token_id=1)
    return CLIPTextModel(config).eval()


QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|image_pad|>", "<|video_pad|>"]
# The Qwen2 chat layout, short: what HunyuanVideo-1.5's `apply_chat_template` call needs.
QWEN_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def qwen_tokenizer():
    """A byte-level BPE Qwen2 tokenizer with no merges (one token per byte) and the Qwen special tokens."""
    from transformers import Qwen2Tokenizer

    vocab = {c: i for i, c in enumerate(_byte_chars())}
    for token in QWEN_SPECIAL:
        vocab[token] = len(vocab)
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[], additional_special_tokens=QWEN_SPECIAL[1:])
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    return tokenizer


def qwen25vl_text_config(vocab_size: int, hidden: int = TEXT_DIM):
    return dict(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=37, num_hidden_layers=3,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]}, rope_theta=10000.0)
