"""``lamed train`` with bad data, damaged checkpoints and interrupted runs.

Resume after ``kill -9`` must give the weights of an uninterrupted run, bitwise, also for the
segmentation recipes whose box / point prompts are random; a damaged checkpoint must be refused,
not resumed; bad samples are refused with their reason; a run that stops on too many bad samples
ends with a one-screen report and a non-zero exit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
RECIPES = REPO / "configs" / "recipes"


@pytest.fixture(scope="module")
def seg_phantoms(tmp_path_factory) -> Path:
    """4 training phantoms at the tiny recipes' 32x64x64 (+ referring texts for RefSAM3D)."""
    from LaMed.data.prepare import prepare_phantoms

    out = tmp_path_factory.mktemp("seg_phantoms")
    prepare_phantoms(out, n=4, shape=(32, 64, 64), seed=5, val_fraction=0.0, test_fraction=0.0, progress=False)
    return out


def _train(recipe: Path, out: Path, manifest: Path, fault: str | None = None, *extra: str):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(REPO), str(TESTS)]))
    env.pop("LAMED_FAULT_INJECT", None)
    if fault:
        env["LAMED_FAULT_INJECT"] = fault
    # 4 items, batch 2: 2 steps an epoch; a checkpoint at step 3 is in the middle of epoch 1.
    cmd = [
        sys.executable,
        "-m",
        "LaMed.train",
        str(recipe),
        "--train_manifest",
        str(manifest),
        "--output_dir",
        str(out),
        "--max_steps",
        "6",
        "--save_strategy",
        "steps",
        "--save_steps",
        "3",
        "--save_total_limit",
        "1",
        "--per_device_train_batch_size",
        "2",
        *extra,
    ]
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)


def _weights(folder: Path):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def _assert_bitwise_equal(a, b):
    import torch

    assert a.keys() == b.keys()
    diffs = {k: (a[k].float() - b[k].float()).abs().max().item() for k in a if not torch.equal(a[k], b[k])}
    assert not diffs, f"{len(diffs)} tensors differ, max {max(diffs.values())}: {sorted(diffs)[:5]}"


# Every tiny recipe whose training draws random box / point prompts (or random referring texts).
RANDOM_PROMPT_RECIPES = ["tiny_segvol", "tiny_r1seg3d_step1_sam"]


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RANDOM_PROMPT_RECIPES)
def test_resume_after_sigkill_is_bitwise_for_random_prompts(recipe, seg_phantoms, tmp_path):
    manifest = seg_phantoms / "train.json"
    ref = _train(RECIPES / f"{recipe}.yaml", tmp_path / "ref", manifest)
    assert ref.returncode == 0, ref.stderr[-3000:]
    killed = _train(RECIPES / f"{recipe}.yaml", tmp_path / "run", manifest, "kill_after_step:5")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    resumed = _train(RECIPES / f"{recipe}.yaml", tmp_path / "run", manifest)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "checkpoint-3" in resumed.stderr
    _assert_bitwise_equal(_weights(tmp_path / "run"), _weights(tmp_path / "ref"))


# ---- damaged checkpoints -------------------------------------------------------------------------------

TOY = TESTS / "recipes" / "tiny_toy.yaml"


@pytest.fixture(scope="module")
def toy_phantoms(tmp_path_factory) -> Path:
    sys.path.insert(0, str(TESTS))
    from train_toy_task import make_phantom_data

    return make_phantom_data(tmp_path_factory.mktemp("toy_phantoms"))


def _toy(out: Path, phantoms: Path, *extra: str, fault: str | None = None):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(REPO), str(TESTS)]))
    env.pop("LAMED_FAULT_INJECT", None)
    if fault:
        env["LAMED_FAULT_INJECT"] = fault
    cmd = [
        sys.executable,
        "-m",
        "LaMed.cli",
        "train",
        str(TOY),
        "--train_manifest",
        str(phantoms / "train.json"),
        "--output_dir",
        str(out),
        "--max_steps",
        "4",
        "--save_steps",
        "2",
        "--save_total_limit",
        "1",
        *extra,
    ]
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.fixture()
def killed_run(tmp_path, toy_phantoms) -> Path:
    """A toy run SIGKILLed after step 3: checkpoint-2 is complete (with hashes), no final model."""
    proc = _toy(tmp_path, toy_phantoms, fault="kill_after_step:3")
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    return tmp_path / "checkpoint-2"


def _one_screen_error(proc, *words):
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    err = proc.stderr[proc.stderr.index("lamed train: error:") :]
    assert len(err.splitlines()) <= 24, err
    for w in words:
        assert w in err, (w, err)
    return err


@pytest.mark.slow
def test_marker_holds_the_hash_of_every_file(killed_run):
    import hashlib

    record = json.loads((killed_run / "lamed_checkpoint.json").read_text())
    assert set(record["sha256"]) == set(record["files"]) and "model.safetensors" in record["files"]
    for rel, digest in record["sha256"].items():
        assert hashlib.sha256((killed_run / rel).read_bytes()).hexdigest() == digest


@pytest.mark.slow
def test_checkpoint_changed_without_a_size_change_is_refused(killed_run, toy_phantoms):
    weights = killed_run / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF  # one flipped byte inside the last tensor: same size, other content
    weights.write_bytes(bytes(data))
    proc = _toy(killed_run.parent, toy_phantoms)
    _one_screen_error(proc, "model.safetensors", "SHA-256")
    assert not (killed_run.parent / "model.safetensors").exists()  # nothing trained, nothing saved


@pytest.mark.slow
def test_checkpoint_with_non_finite_weights_is_refused(killed_run, toy_phantoms):
    import torch
    from safetensors.torch import load_file, save_file

    from LaMed.train.checkpoint import mark_complete

    weights = killed_run / "model.safetensors"
    sd = load_file(str(weights))
    name = sorted(sd)[0]
    sd[name] = torch.full_like(sd[name], float("nan"))
    save_file(sd, str(weights), metadata={"format": "pt"})
    mark_complete(killed_run, 2)  # hashes match: only the finiteness check can catch it
    proc = _toy(killed_run.parent, toy_phantoms)
    _one_screen_error(proc, str(weights), name, "NaN")


@pytest.mark.slow
def test_disk_full_during_a_checkpoint_save_is_one_message(tmp_path, toy_phantoms):
    # A sitecustomize makes every torch.save (the optimizer state of each checkpoint) fail with ENOSPC.
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import errno, torch\n"
        "def _full(*a, **k):\n"
        "    raise OSError(errno.ENOSPC, 'No space left on device')\n"
        "torch.save = _full\n"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(hook), str(REPO), str(TESTS)]))
    env.pop("LAMED_FAULT_INJECT", None)
    cmd = [
        sys.executable,
        "-m",
        "LaMed.cli",
        "train",
        str(TOY),
        "--train_manifest",
        str(toy_phantoms / "train.json"),
        "--output_dir",
        str(tmp_path / "out"),
        "--max_steps",
        "4",
        "--save_steps",
        "2",
    ]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    _one_screen_error(proc, "no space left", str(tmp_path / "out"))
    from LaMed.train.checkpoint import last_complete_checkpoint

    assert last_complete_checkpoint(tmp_path / "out") is None  # the half-written one is not complete


# ---- bad samples ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_too_many_bad_samples_is_a_one_screen_report(tmp_path, toy_phantoms):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(toy_phantoms, data)
    for f in (data / "images").glob("*.npy"):
        f.write_bytes(b"not an array")
    proc = _toy(tmp_path / "out", data)
    err = _one_screen_error(proc, "bad train samples", "max_bad_sample_fraction", ".npy")
    assert "Traceback" not in proc.stderr and err.count("\n  ") <= 10


def _seg_manifest(root: Path, image) -> Path:
    import numpy as np

    (root / "images").mkdir(parents=True)
    (root / "masks" / "c").mkdir(parents=True)
    np.save(root / "images" / "c.npy", image.astype(np.float16))  # the prepared format
    mask = np.zeros_like(image, dtype=np.uint8)
    mask[0, 2:4, 2:4, 2:4] = 1
    np.save(root / "masks" / "c" / "liver.npy", mask)
    manifest = {
        "format": "lamed.prepared/1",
        "dataset": "t",
        "split": "train",
        "items": [{"id": "c", "image": "images/c.npy", "masks": {"liver": "masks/c/liver.npy"}}],
    }
    (root / "train.json").write_text(json.dumps(manifest))
    return root / "train.json"


@pytest.mark.parametrize(
    "fill,words", [(1000.0, ["[0, 1]", "1000"]), (float("nan"), ["NaN"]), (-0.5, ["[0, 1]", "-0.5"])]
)
def test_segmentation_refuses_images_outside_the_unit_interval(tmp_path, fill, words):
    import numpy as np

    from LaMed.data.seg_dataset import PreparedSegDataset

    image = np.full((1, 8, 8, 8), 0.5, np.float32)
    image[0, 0, 0, 0] = fill
    ds = PreparedSegDataset(_seg_manifest(tmp_path, image), classes=["liver"])
    with pytest.raises(ValueError) as info:
        ds[0]
    for w in words + ["c.npy"]:
        assert w in str(info.value)


def _mllm_items(tmp_path, text=None, vqa=None):
    import numpy as np

    (tmp_path / "images").mkdir(exist_ok=True)
    np.save(tmp_path / "images" / "a.npy", np.full((1, 4, 8, 8), 0.5, np.float32))
    item = {"id": "a", "image": "images/a.npy"}
    if text is not None:
        item["text"] = text
    if vqa is not None:
        item["vqa"] = vqa
    return [item]


class _EchoProcessor:
    def encode_example(self, q, a):
        return {"input_ids": [1], "labels": [1]}


@pytest.mark.parametrize("text", ["", "   \n"])
def test_empty_report_is_refused_not_dropped(tmp_path, text):
    from LaMed.data.mllm_dataset import MLLMDataset

    ds = MLLMDataset.from_items(_mllm_items(tmp_path, text=text), tmp_path, _EchoProcessor(), task="caption")
    assert len(ds) == 1  # indexed, so the bad-sample accounting counts it
    with pytest.raises(ValueError, match="empty report"):
        ds[0]


def test_empty_vqa_answer_is_refused(tmp_path):
    from LaMed.data.mllm_dataset import MLLMDataset

    vqa = [{"question": "Is the liver enlarged?", "answer": " ", "type": "open", "topic": "liver"}]
    ds = MLLMDataset.from_items(_mllm_items(tmp_path, vqa=vqa), tmp_path, _EchoProcessor(), task="vqa_open")
    with pytest.raises(ValueError, match="empty answer"):
        ds[0]
