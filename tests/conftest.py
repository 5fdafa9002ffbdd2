"""Shared pytest setup: offline environment, the shared sample data, small helpers."""

from __future__ import annotations

import locale
import logging
import os
import sys
from pathlib import Path

import pytest

# Any accidental hub access must fail fast instead of waiting on a network timeout.
for _k, _v in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "WANDB_MODE": "offline",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_k, _v)


class _CurrentStderrHandler(logging.StreamHandler):
    """A stream handler that writes to whatever ``sys.stderr`` is when a record is emitted.

    transformers creates its library handler with ``StreamHandler()`` on first use, binding the
    ``sys.stderr`` of that moment; when that moment falls inside a test that captures output, the
    handler keeps the capture's file after the test closed it, and every later transformers warning
    prints "--- Logging error ---" with a traceback into whichever test runs then (a test that
    asserts "no traceback on stderr" failed only when it ran after such a test). Installing this
    handler as transformers' default before any test runs removes that order dependence.
    """

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ assigns it; the property always answers sys.stderr
        pass


def _route_transformers_logging() -> None:
    from transformers.utils import logging as hf_logging

    root = hf_logging._get_library_root_logger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = _CurrentStderrHandler()
    handler.flush = lambda: sys.stderr.flush()
    root.addHandler(handler)
    hf_logging._default_handler = handler


_route_transformers_logging()

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LAMED_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture
def one_thread():
    """One torch intra-op thread for the test: on 2 shared cores one thread is faster than two
    contending ones on tiny tensors, and training runs become reproducible."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def quick_demo(tmp_path_factory):
    """``lamed demo --quick`` run once per session (with the real CT when ../shared/data has it):
    ``(exit code, out folder, metrics.json)``. Shared by the demo tests and the MLLM learning test,
    which score the same trained models (the run is the suite's longest: ~13 minutes on 2 cores)."""
    import json

    from LaMed.cli import main

    real = SHARED_DATA / "totalsegmentator"
    out = tmp_path_factory.mktemp("demo") / "demo_out"
    argv = ["demo", "--out", str(out), "--quick"] + (["--real-data", str(real)] if real.is_dir() else [])
    rc = main(argv)
    return rc, out, json.loads((out / "metrics.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``; tests that need it are skipped cleanly when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared sample data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def totalseg_dir(shared_data: Path) -> Path:
    d = shared_data / "totalsegmentator"
    if not (d / "ct_abdomen.nii.gz").is_file():
        pytest.skip(f"TotalSegmentator sample volumes not found in {d}")
    return d


# SimpleITK's GDCM DICOM *writer* (used by tests and fixtures that build DICOM series) switches the
# process to the "C" locale; every later ``subprocess.run(text=True)`` and default-encoding ``open``
# in this pytest process would then decode as ASCII. Reading DICOM does not do this. The locale of
# the session's start is put back around every test (before its fixtures are set up, and after).
_SESSION_LOCALE = locale.setlocale(locale.LC_ALL)


def _reset_locale() -> None:
    if locale.setlocale(locale.LC_ALL) != _SESSION_LOCALE:
        locale.setlocale(locale.LC_ALL, _SESSION_LOCALE)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    _reset_locale()


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item, nextitem):
    _reset_locale()


# Fixtures that train models for minutes: a test that uses one belongs to the slow tier, whatever
# its own body costs (``make test-fast`` deselects it; ``make test`` runs it).
SLOW_FIXTURES = ("quick_demo",)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if any(name in getattr(item, "fixturenames", ()) for name in SLOW_FIXTURES):
            item.add_marker(pytest.mark.slow)
