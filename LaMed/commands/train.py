"""``lamed train RECIPE.yaml [--key value ...]``: train a model from a recipe.

Everything after the recipe path overrides a recipe field (``--learning_rate 5e-5``,
``--lora.r 8``, ``--training.max_steps=10``). ``--check`` parses the recipe, prints the resolved
values and exits without building anything. For several processes use a launcher
(``bash scripts/<recipe>.sh NUM_GPUS``) or ``torchrun ... -m LaMed.train RECIPE.yaml``.
"""

from __future__ import annotations

import argparse
import sys

from LaMed.train.distributed import destroy_process_group
from LaMed.train.main import failure_message, run_training


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="recipe YAML (configs/recipes/*.yaml)")
    parser.add_argument(
        "overrides",
        nargs=argparse.REMAINDER,
        help="--field value pairs overriding the recipe; --check: print the resolved recipe and exit",
    )


def run(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    check = "--check" in overrides
    if check:
        overrides.remove("--check")
        import yaml

        from LaMed.train.recipe import parse_recipe

        recipe = parse_recipe(args.recipe, overrides)
        print(yaml.safe_dump(recipe.to_dict(), sort_keys=False), end="")
        return 0

    try:
        run = run_training(args.recipe, overrides)
    except Exception as exc:  # noqa: BLE001 - known failures get one screen, the rest a traceback
        message = failure_message(exc)
        if message is None:
            raise
        print(f"lamed train: error: {message}", file=sys.stderr)
        return 1
    finally:
        destroy_process_group()
    print(
        f"trained {run.output.global_step} steps, training loss {run.output.training_loss:.4f}; "
        f"model saved to {run.recipe.training_args.output_dir}"
    )
    return 0
