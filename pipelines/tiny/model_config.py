"""The architecture of ``tiny``: a diffusers WanTransformer3DModel in pixel space (3 channels in and out, no VAE).

Patch (1, 4, 4) turns an 8x32x32 video into 512 tokens; 6 blocks of width 96 keep a training step at a couple of
seconds on one CPU core while still being the same module tree as Wan2.1, so every hook written against ``tiny``
attaches to the real model unchanged.
"""

TRANSFORMER_CONFIG = dict(
    patch_size=(1, 4, 4),
    num_attention_heads=4,
    attention_head_dim=24,
    in_channels=3,
    out_channels=3,
    text_dim=32,
    freq_dim=64,
    ffn_dim=384,
    num_layers=6,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
    rope_max_seq_len=256,
)
TEXT_MAX_TOKENS = 16
DEFAULT_FRAMES, DEFAULT_HEIGHT, DEFAULT_WIDTH = 8, 32, 32
