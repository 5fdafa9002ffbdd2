#!/usr/bin/env bash
# Med3DVLM DCFormer_SigLIP: DCFormer-small + ClinicalBERT, sigmoid loss
# Usage: bash scripts/med3dvlm_siglip.sh [NUM_GPUS] [--key value ...]   (recipe: configs/recipes/med3dvlm_siglip.yaml)
# Tiny CPU twin: bash scripts/_launch.sh configs/recipes/tiny_med3dvlm_siglip.yaml 1 --train_manifest PATH
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"
lamed_launch configs/recipes/med3dvlm_siglip.yaml "$@"
