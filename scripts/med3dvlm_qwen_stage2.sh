#!/usr/bin/env bash
# Med3DVLM Qwen2.5-7B stage 2 (LoRA + vision/projector/embeddings/head)
# Usage: bash scripts/med3dvlm_qwen_stage2.sh [NUM_GPUS] [--key value ...]   (recipe: configs/recipes/med3dvlm_qwen_stage2.yaml)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"
lamed_launch configs/recipes/med3dvlm_qwen_stage2.yaml "$@"
