#!/usr/bin/env bash
# HSENet Phi-4-mini VQA on RadGenome-ChestCT (LoRA + spatial packers)
# Usage: bash scripts/hsenet_phi4_vqa.sh [NUM_GPUS] [--key value ...]   (recipe: configs/recipes/hsenet_phi4_vqa.yaml)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"
lamed_launch configs/recipes/hsenet_phi4_vqa.yaml "$@"
