"""The demo: tiny twins of the published recipes trained and evaluated on synthetic phantoms.

``lamed demo`` (``LaMed.commands.demo``) runs :func:`run_demo`; the parts live in readable modules:

* :mod:`~LaMed.demo.config`: :class:`DemoConfig` and the ``FULL`` / ``QUICK`` presets;
* :mod:`~LaMed.demo.stages`: phantoms, CLIP, report/VQA, segmentation and real-CT stages;
* :mod:`~LaMed.demo.reasoning`: the reasoning-segmentation stage (removed organs asked about too);
* :mod:`~LaMed.demo.bench`: Bench's command lines run as child processes;
* :mod:`~LaMed.demo.scoring`: chance levels and the findings F1 of generated reports;
* :mod:`~LaMed.demo.figures`: the PNG figures; :mod:`~LaMed.demo.report`: ``report.md`` /
  ``metrics.json`` and the learned-above-chance checks.
"""

from LaMed.demo.config import FULL, PARTS, QUICK, DemoConfig
from LaMed.demo.pipeline import run_demo

__all__ = ["DemoConfig", "FULL", "QUICK", "PARTS", "run_demo"]
