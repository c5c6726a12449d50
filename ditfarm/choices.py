"""The names a user may choose on the command line (cache policies, precisions), apart from the code behind them:
`ditfarm --help` and `ditfarm render --help` list them without importing torch or diffusers."""

POLICIES = ("none", "bwcache", "profiling", "taylorseer", "adaptive", "ertacache", "bac", "harmonica")
DTYPE_NAMES = ("auto", "bf16", "fp16", "fp32")
