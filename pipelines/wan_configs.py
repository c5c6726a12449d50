"""The published Wan2.1 component configs, for building the real shapes with random weights (no download).

From the diffusers folders Wan-AI/Wan2.1-T2V-1.3B-Diffusers and -14B-Diffusers (transformer/config.json,
text_encoder/config.json); the VAE is diffusers' AutoencoderKLWan with its default arguments, which are Wan2.1's.
"""

from __future__ import annotations

WAN21_1_3B = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=12,
    attention_head_dim=128,
    in_channels=16,
    out_channels=16,
    text_dim=4096,
    freq_dim=256,
    ffn_dim=8960,
    num_layers=30,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
    rope_max_seq_len=1024,
)
WAN21_14B = {**WAN21_1_3B, "num_attention_heads": 40, "ffn_dim": 13824, "num_layers": 40}
UMT5_XXL = dict(  # Wan2.1's text encoder (google/umt5-xxl's encoder)
    vocab_size=256384,
    d_model=4096,
    d_kv=64,
    d_ff=10240,
    num_layers=24,
    num_heads=64,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    feed_forward_proj="gated-gelu",
    dense_act_fn="gelu_new",
    is_gated_act=True,
    tie_word_embeddings=False,
)
VAE_STRIDE = (4, 8, 8)  # 4x in time (after the first frame), 8x in space
TEXT_TOKENS = 512  # Wan's max_sequence_length: prompts are padded to it
