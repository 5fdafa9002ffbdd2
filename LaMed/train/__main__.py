"""``python -m LaMed.train RECIPE.yaml [--key value ...]`` (the form torchrun / accelerate launch run)."""

import sys

from LaMed.train.main import main

if __name__ == "__main__":
    sys.exit(main())
