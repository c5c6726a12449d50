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

# Wan2.2's experts (T2V-A14B, I2V-A14B) are each Wan2.1-14B's architecture; I2V reads 36 channels (16 noise, 4 mask,
# 16 image latents).  TI2V-5B (Wan-AI/Wan2.2-TI2V-5B-Diffusers): 3072 wide, 30 layers, 48 latent channels, and the
# 48-channel VAE that compresses 16x in space (a 2x patchify before three downsampling stages).
WAN21_I2V_14B = {**WAN21_14B, "in_channels": 36, "image_dim": 1280}
WAN22_I2V_A14B = {**WAN21_14B, "in_channels": 36}
WAN22_TI2V_5B = {
    **WAN21_1_3B,
    "num_attention_heads": 24,
    "ffn_dim": 14336,
    "in_channels": 48,
    "out_channels": 48,
}
WAN22_VAE = dict(
    base_dim=160,
    decoder_base_dim=256,
    z_dim=48,
    dim_mult=[1, 2, 4, 4],
    num_res_blocks=2,
    temperal_downsample=[False, True, True],
    is_residual=True,
    in_channels=12,
    out_channels=12,
    patch_size=2,
    scale_factor_spatial=16,
    scale_factor_temporal=4,
    latents_mean=[0.0] * 48,
    latents_std=[1.0] * 48,
)
CLIP_VIT_H_14 = dict(  # Wan2.1 image-to-video's image encoder (open-clip ViT-H/14 as a transformers CLIPVisionModel)
    hidden_size=1280,
    intermediate_size=5120,
    num_hidden_layers=32,
    num_attention_heads=16,
    image_size=224,
    patch_size=14,
    projection_dim=1024,
    hidden_act="gelu",
)
