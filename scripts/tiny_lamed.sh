#!/usr/bin/env bash
# tiny LaMed (Phi-3-style 2x128 LLM + tiny DCFormer + mixer) on phantoms
# Usage: bash scripts/tiny_lamed.sh [NUM_GPUS] [--key value ...]   (recipe: configs/recipes/tiny_lamed.yaml)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"
lamed_launch configs/recipes/tiny_lamed.yaml "$@"
