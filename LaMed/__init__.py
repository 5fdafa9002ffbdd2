"""LaMed: one framework for 3D medical vision-language models.

Importing the package is cheap: it registers nothing heavy and imports neither torch nor
transformers. Sub-packages (``LaMed.data``, ``LaMed.models``, ``LaMed.metrics``, ...) import what
they need when they are used.
"""

import _lamed_tvshim  # noqa: F401  (CPU-only torch + CUDA torchvision wheel; see the module)

__version__ = "0.1.0"


def load(path_or_id, **kwargs):
    """Load a LaMed model folder or hub id for inference; see :func:`LaMed.inference.api.load`."""
    from LaMed.inference.api import load as _load

    return _load(path_or_id, **kwargs)
