#!/usr/bin/env bash
# Med3DVLM Qwen2.5-7B fine-tuning on FLARE 2025 Task 5
# Usage: bash scripts/med3dvlm_qwen_flare.sh [NUM_GPUS] [--key value ...]   (recipe: configs/recipes/med3dvlm_qwen_flare.yaml)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"
lamed_launch configs/recipes/med3dvlm_qwen_flare.yaml "$@"
