#!/bin/bash
# `ditfarm bench gpu` on a GPU machine (its image has torch, transformers and Triton, not diffusers): diffusers,
# and peft, accelerate and torchao for the LoRA and quantized rows, travel as wheels in .whl/ (carried); ditfarm is
# put together from its folders without pip.
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
mkdir -p /tmp/pkg && cp -r ditfarm /tmp/pkg/ && for d in storage pipelines cache worker cluster jobs tools commands; do cp -r "$d" /tmp/pkg/ditfarm/; done
export PYTHONPATH=/tmp/pkg:/tmp/site PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv
python3 -c "import torch, diffusers, transformers; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__)"
python3 -m ditfarm.commands.cli bench gpu --json "$OUT/bench-gpu-h200.json" "$@" 2>&1 | grep -v "^Loading\|Writing model" | tee "$OUT/bench-gpu.log"
