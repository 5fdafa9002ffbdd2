#!/usr/bin/env bash
# Shared launcher logic for scripts/<recipe>.sh; also usable directly:
#
#   bash scripts/_launch.sh RECIPE.yaml [NUM_GPUS] [--key value ...]
#
# NUM_GPUS (default: all visible GPUs, or 1 on a machine without GPUs) is the number of processes.
# With GPUs:    accelerate launch --config_file $ACCELERATE_CONFIG (default: default_config.yaml,
#               DeepSpeed ZeRO-2 bf16) --num_processes NUM_GPUS -m LaMed.train RECIPE overrides...
# Without GPUs: torchrun --nproc_per_node NUM_GPUS -m LaMed.train RECIPE --use_cpu true overrides...
#               (gloo backend; meant for the tiny_* twins; `accelerate --cpu` would run one process only)
# Environment:  LAMED_LAUNCHER=accelerate|torchrun|python to force a launcher, ACCELERATE_CONFIG,
#               MASTER_PORT (default: a free-ish port 29500-30499), LAMED_GPUS (skip GPU detection),
#               LAMED_LAUNCH_DRY_RUN=1 (print the command instead of running it).
# Extra overrides win over the recipe, e.g. --output_dir runs/x --per_device_train_batch_size 4.
# Run from the repository root: recipes name configs/deepspeed/*.json and runs/ relative to it.

lamed_launch() {
    if [ $# -lt 1 ]; then
        echo "usage: lamed_launch RECIPE.yaml [NUM_GPUS] [--key value ...]" >&2
        return 2
    fi
    local recipe="$1"; shift
    local root
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    if [ ! -f "$recipe" ] && [ -f "$root/$recipe" ]; then recipe="$root/$recipe"; fi
    if [ ! -f "$recipe" ]; then
        echo "lamed_launch: recipe $recipe not found" >&2
        return 2
    fi
    local nproc=""
    if [ $# -gt 0 ] && [[ "$1" =~ ^[0-9]+$ ]]; then nproc="$1"; shift; fi

    local python="${PYTHON:-python}"
    local gpus="${LAMED_GPUS:-}"
    if [ -z "$gpus" ]; then
        gpus="$("$python" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)"
    fi
    if [ -z "$nproc" ]; then nproc=$(( gpus > 0 ? gpus : 1 )); fi
    if [ "$nproc" -lt 1 ]; then nproc=1; fi
    local port="${MASTER_PORT:-$(( 29500 + RANDOM % 1000 ))}"

    local launcher="${LAMED_LAUNCHER:-}"
    if [ -z "$launcher" ]; then
        if [ "$gpus" -gt 0 ]; then launcher=accelerate; else launcher=torchrun; fi
    fi
    local -a cmd extra=()
    if [ "$gpus" -eq 0 ]; then extra=(--use_cpu true); fi
    case "$launcher" in
        accelerate)
            cmd=(accelerate launch --config_file "${ACCELERATE_CONFIG:-$root/default_config.yaml}"
                 --num_processes "$nproc" --main_process_port "$port" -m LaMed.train) ;;
        torchrun)
            cmd=(torchrun --nproc_per_node "$nproc" --master_port "$port" -m LaMed.train) ;;
        python)
            cmd=("$python" -m LaMed.train) ;;
        *)
            echo "lamed_launch: unknown LAMED_LAUNCHER=$launcher (accelerate, torchrun or python)" >&2
            return 2 ;;
    esac
    cmd+=("$recipe" "${extra[@]}" "$@")
    if [ -n "${LAMED_LAUNCH_DRY_RUN:-}" ]; then
        printf '%q ' "${cmd[@]}"; echo
        return 0
    fi
    echo "[lamed] $launcher, $nproc process(es), $( [ "$gpus" -gt 0 ] && echo "$gpus GPU(s)" || echo CPU ): ${cmd[*]}" >&2
    "${cmd[@]}"
}

# Run directly (not sourced): bash scripts/_launch.sh RECIPE [NUM_GPUS] [overrides]
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -euo pipefail
    lamed_launch "$@"
fi
