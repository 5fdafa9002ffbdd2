"""Packaging: the CLI starts without heavy imports, registries behave, the CPU torchvision shim works."""

import subprocess
import sys

import pytest

from LaMed.utils.registry import Registry


def test_cli_help_does_not_import_torch():
    code = (
        "import sys; from LaMed.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "prepare" in out.stdout and "demo" in out.stdout
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_registry_errors_suggest_close_names():
    reg = Registry("encoder")
    reg.register("vit3d_base", lambda **kw: ("vit", kw))
    assert reg.create("vit3d_base", depth=2) == ("vit", {"depth": 2})
    with pytest.raises(KeyError, match="did you mean 'vit3d_base'"):
        reg.get("vit3d_bse")
    with pytest.raises(KeyError, match="already registered"):
        reg.register("vit3d_base", lambda: None)


@pytest.mark.slow
def test_transformers_trainer_and_open_clip_import():
    # Both break when PyPI's CUDA torchvision meets a CPU torch unless the shim is active.
    code = "import LaMed; from transformers import Trainer; import open_clip; print(len(open_clip.list_models()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout.strip().splitlines()[-1]) > 50


def test_prepare_dataset_options_reach_the_preparer(tmp_path, capsys):
    """`lamed prepare <dataset> --in RAW --out DIR`: options belong to the dataset's own parser."""
    from LaMed.cli import main

    raw = tmp_path / "raw"
    raw.mkdir()
    assert main(["prepare", "ct_rate", "--in", str(raw), "--out", str(tmp_path / "out")]) == 1
    assert "no CT-RATE report CSV found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["prepare", "ct_rate", "--help"])
    assert "--hu-source" in capsys.readouterr().out
