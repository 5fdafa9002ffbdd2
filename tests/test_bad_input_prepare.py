"""Broken and hostile input to ``lamed prepare`` (and to the prepared data it writes).

One test per case: a run that fails items or finds nothing exits non-zero with the error report,
items without information are refused with a reason, prepared files are shareable (0644 under
umask 022), data files never run code, manifest paths stay inside the dataset folder, the resize
never builds a matrix that grows with the square of an axis, and workers die with their parent.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from LaMed.cli import main

REPO = Path(__file__).resolve().parents[1]


def _nifti(path: Path, data, spacing=(2.0, 1.0, 1.0)) -> Path:
    """A (D, H, W) array as an LPS-ordered NIfTI (x = W reversed ... kept simple: diagonal affine)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    aff = np.diag([-spacing[2], -spacing[1], spacing[0], 1.0])
    nib.save(nib.Nifti1Image(np.ascontiguousarray(np.asarray(data).transpose(2, 1, 0)), aff), path)
    return path


def _ct(seed=0, shape=(8, 24, 24)) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1000, 1000, shape).astype(np.int16)


# --------------------------------------------------------------------------- exit codes


def test_empty_input_folder_exits_non_zero_and_writes_no_manifest(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.txt").write_text("no volumes", encoding="utf-8")
    code = main(["prepare", "volumes", "--in", str(tmp_path / "in"), "--out", str(tmp_path / "out")])
    assert code != 0
    assert "no volumes found" in capsys.readouterr().err
    assert not list((tmp_path / "out").glob("*.json")) if (tmp_path / "out").exists() else True


@pytest.mark.parametrize("limit", ["-1", "0"])
def test_non_positive_limit_is_refused(tmp_path, capsys, limit):
    for i in range(3):
        _nifti(tmp_path / "in" / f"c{i}.nii.gz", _ct(i))
    code = main(["prepare", "volumes", "--in", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--limit", limit])
    assert code != 0 and f"--limit must be a whole number >= 1, got {limit}" in capsys.readouterr().err
    assert not (tmp_path / "out" / "all.json").exists()


def test_dataset_preparer_refuses_a_negative_limit(tmp_path):
    from Data.biomedsegfm import PREPARER

    (tmp_path / "raw").mkdir()
    with pytest.raises(ValueError, match=r"--limit must be >= 1 .*got -1"):
        PREPARER.prepare(tmp_path / "raw", tmp_path / "out", limit=-1, no_progress=True)


def test_disk_full_on_most_phantoms_exits_non_zero_with_the_report(tmp_path, monkeypatch, capsys):
    import LaMed.data.prepared as prepared
    from LaMed.utils.atomic import OutputError

    real = prepared.save_npy_atomic

    def full_disk(path, array):
        if "phantom_00000" not in str(path):  # 1 of 6 fits, then the disk is full
            raise OutputError(errno.ENOSPC, f"cannot write '{path}': no space left on the device")
        return real(path, array)

    monkeypatch.setattr(prepared, "save_npy_atomic", full_disk)
    code = main(["prepare", "phantoms", "--out", str(tmp_path / "ph"), "--n", "6", "--shape", "8", "32", "32"])
    out = capsys.readouterr().out
    assert code == 3
    assert "failed 5" in out and "no space left on the device" in out
    assert len(json.loads((tmp_path / "ph" / "errors.json").read_text())) == 5


# --------------------------------------------------------------------------- items without information


def test_constant_volume_is_refused_with_a_reason(tmp_path, capsys):
    _nifti(tmp_path / "in" / "flat.nii.gz", np.full((8, 24, 24), 40, np.int16))
    _nifti(tmp_path / "in" / "good.nii.gz", _ct())
    code = main(["prepare", "volumes", "--in", str(tmp_path / "in"), "--out", str(tmp_path / "out")])
    assert code == 3
    errs = json.loads((tmp_path / "out" / "errors.json").read_text())
    assert [Path(e["file"]).name for e in errs] == ["flat.nii.gz"]
    assert "every voxel of the volume equals 40" in errs[0]["error"]
    items = json.loads((tmp_path / "out" / "all.json").read_text())["items"]
    assert [it["id"] for it in items] == ["good"]


def test_spacing_that_collapses_the_grid_is_refused(tmp_path):
    from LaMed.data.prepare import prepare_volumes

    _nifti(tmp_path / "in" / "tiny.nii.gz", _ct(), spacing=(0.0003, 0.0003, 0.0003))
    summary = prepare_volumes(tmp_path / "in", tmp_path / "out", preset="ct_rate", progress=False)
    assert summary.failed == 1 and summary.counts == {}
    err = summary.errors[0]["error"]
    assert "the prepared image is constant (0) after preset 'ct_rate'" in err and "0.0003" in err


# --------------------------------------------------------------------------- permissions


def test_prepared_files_are_0644_under_umask_022(tmp_path):
    from Data.biomedsegfm import PREPARER
    from LaMed.data.prepare import prepare_phantoms, prepare_volumes

    _nifti(tmp_path / "in" / "a.nii.gz", _ct())
    (tmp_path / "in" / "broken.nii.gz").write_bytes(b"not a volume")  # -> errors.json / errors.txt
    d = tmp_path / "raw" / "3D_train_npz_all" / "CT" / "Organs"
    d.mkdir(parents=True)
    gts = np.zeros((6, 16, 16), np.uint8)
    gts[1:4, 3:9, 2:8] = 1
    np.savez_compressed(d / "c1.npz", imgs=_ct(1, (6, 16, 16)), gts=gts, spacing=np.ones(3))
    (tmp_path / "raw" / "CVPR25_TextSegFMData_with_class.json").write_text(
        json.dumps({"Organs": {"1": ["liver"], "instance_label": 0}})
    )
    old = os.umask(0o022)
    try:
        prepare_phantoms(tmp_path / "out" / "ph", n=2, shape=(8, 32, 32), progress=False)
        prepare_volumes(tmp_path / "in", tmp_path / "out" / "vol", progress=False)
        PREPARER.prepare(tmp_path / "raw", tmp_path / "out" / "segfm", size=[4, 16, 16], no_progress=True)
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert {p.suffix for p in files} == {".npy", ".json", ".txt"}
    assert (tmp_path / "out" / "segfm" / "meta" / "dataset.json").is_file()
    modes = {str(p.relative_to(tmp_path)): oct(p.stat().st_mode & 0o777) for p in files}
    assert set(modes.values()) == {"0o644"}, modes


# --------------------------------------------------------------------------- security


class _Payload:
    """Unpickling this calls os.system: a harmless marker file stands for arbitrary code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_biomedsegfm_text_prompts_are_read_without_unpickling(tmp_path):
    from Data.biomedsegfm import PREPARER
    from Data.npz_objects import UnsafeObjectArray, read_object_array

    raw = tmp_path / "raw"
    v, g = raw / "3D_val_npz", raw / "3D_val_gt" / "3D_val_gt_text"
    v.mkdir(parents=True)
    g.mkdir(parents=True)
    imgs = np.random.default_rng(0).integers(0, 255, (6, 16, 16)).astype(np.uint8)
    gts = np.zeros(imgs.shape, np.uint8)
    gts[1:4, 2:9, 3:8] = 1
    marker = tmp_path / "code_ran"
    evil = np.empty((), dtype=object)
    evil[()] = {"1": "liver", "instance_label": 0, "x": _Payload(marker)}
    np.savez_compressed(v / "evil.npz", imgs=imgs, spacing=np.ones(3), text_prompts=evil)
    np.savez_compressed(g / "evil.npz", gts=gts)
    np.savez_compressed(
        v / "good.npz",
        imgs=imgs,
        spacing=np.ones(3),
        text_prompts=np.array({"1": ["Liver", "the liver"], "instance_label": 0}, dtype=object),
    )
    np.savez_compressed(g / "good.npz", gts=gts)
    assert read_object_array(v / "good.npz", "text_prompts") == {"1": ["Liver", "the liver"], "instance_label": 0}
    with pytest.raises(UnsafeObjectArray, match=r"refers to posix\.system"):
        read_object_array(v / "evil.npz", "text_prompts")
    summary = PREPARER.prepare(raw, tmp_path / "out", size=[4, 16, 16], no_progress=True)
    assert not marker.exists()
    assert summary.failed == 1 and "refused text_prompts" in summary.errors[0]["error"]
    assert summary.errors[0]["file"].endswith("evil.npz") and summary.counts == {"validation": 1}


@pytest.mark.parametrize("bad", ["/etc/hostname.npy", "../outside.npy", "images/../../outside.npy"])
def test_manifest_paths_outside_the_dataset_are_refused(tmp_path, bad):
    from LaMed.data.prepare import prepare_phantoms
    from LaMed.data.prepared import PreparedError, load_image, load_manifest, validate_prepared
    from LaMed.train.datasets import read_manifest

    root = tmp_path / "ds"
    prepare_phantoms(root, n=2, shape=(8, 32, 32), progress=False, val_fraction=0, test_fraction=0)
    np.save(tmp_path / "outside.npy", np.zeros((1, 8, 32, 32), np.float16))
    m = json.loads((root / "train.json").read_text())
    m["items"][0]["image"] = bad
    (root / "train.json").write_text(json.dumps(m))
    with pytest.raises(PreparedError, match=r"train\.json: items\[0\]\.image: .*(absolute path|leaves the dataset)"):
        load_manifest(root / "train.json")
    with pytest.raises(ValueError, match=r"items\[0\]\.image"):
        read_manifest(root / "train.json")
    with pytest.raises(PreparedError, match=r"(absolute path|leaves the dataset)"):
        load_image(root / "train.json", bad)
    assert not validate_prepared(root, raise_on_error=False).ok
    m["items"][0]["image"] = "images/phantom_00001.npy"
    m["items"][0]["masks"] = {"liver": "../outside.npy"}
    (root / "train.json").write_text(json.dumps(m))
    with pytest.raises(PreparedError, match=r"items\[0\]\.masks\.liver: '\.\./outside\.npy' leaves the dataset"):
        load_manifest(root / "train.json")


# --------------------------------------------------------------------------- memory and processes


@pytest.mark.slow
def test_resize_of_a_2x2x100000_volume_needs_no_square_matrix():
    from LaMed.data.transforms import apply_preset, resize

    rng = np.random.default_rng(0)
    for shape in ((2, 2, 100000), (100000, 2, 2)):
        a = rng.integers(-1000, 1000, shape).astype(np.int16)
        tracemalloc.start()
        try:
            res = apply_preset("flare", a, (1.0, 1.0, 1.0), {"m": (a > 0).astype(np.uint8)})
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert res["image"].shape == (1, 128, 256, 256) and res["masks"]["m"].shape == (1, 128, 256, 256)
        assert peak < 0.3e9  # was 74.5 GiB for one 100,000 x 100,000 operator
    # the sparse operators give what torch gives
    import torch

    x = rng.random((300, 3, 5)).astype(np.float32)
    ref = torch.nn.functional.interpolate(
        torch.from_numpy(x)[None, None], size=(7, 4, 6), mode="trilinear", align_corners=False
    )[0, 0]
    np.testing.assert_allclose(resize(x, (7, 4, 6)).numpy(), ref.numpy(), atol=1e-5)


def test_killing_prepare_kills_its_workers(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(
        textwrap.dedent(f"""
        import os, sys, time
        sys.path.insert(0, {str(REPO)!r})
        from LaMed.data.prepare import _run_tasks

        def slow(t):
            open(os.path.join({str(tmp_path)!r}, f"worker{{os.getpid()}}"), "w").close()
            time.sleep(120)
            return {{"status": "written", "id": t["id"], "files": 0}}

        if __name__ == "__main__":
            for _ in _run_tasks(slow, [{{"id": "a"}}, {{"id": "b"}}], 2, "test", False):
                pass
    """)
    )
    proc = subprocess.Popen([sys.executable, str(script)], env={**os.environ, "LAMED_PREPARE_START_METHOD": "fork"})
    pids = []
    try:
        deadline = time.time() + 60
        while time.time() < deadline and len(pids) < 2:
            pids = [int(p.name[6:]) for p in tmp_path.glob("worker*")]
            time.sleep(0.1)
        assert len(pids) == 2, "the workers did not start"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

        def alive(pid):
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                return False
            return state != "Z"

        deadline = time.time() + 10
        while time.time() < deadline and any(alive(p) for p in pids):
            time.sleep(0.2)
        assert not any(alive(p) for p in pids), "orphaned workers are still running"
    finally:
        for pid in pids:  # the workers this test started, if the fix failed
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()


def test_raw_metadata_paths_outside_the_raw_folder_are_not_opened(tmp_path):
    from Data.m3d_cap import M3DCapPreparer
    from Data.m3d_seg import M3DSegPreparer

    raw = tmp_path / "raw"
    (raw / "M3D_Cap" / "ct_case").mkdir(parents=True)
    np.save(raw / "M3D_Cap" / "ct_case" / "Axial.npy", np.zeros((2, 2, 2)))
    np.save(tmp_path / "secret.npy", np.zeros((2, 2, 2)))
    cap = raw / "M3D_Cap"
    assert M3DCapPreparer._find(raw, cap, "ct_case/Axial.npy") == cap / "ct_case" / "Axial.npy"
    for bad in ("../secret.npy", str(tmp_path / "secret.npy")):
        assert M3DCapPreparer._find(raw, cap, bad) is None
        assert M3DSegPreparer._resolve(raw, cap, bad) is None


@pytest.mark.parametrize("stream", [b"\x80\x04a.", b"\x80\x04X\x01\x00\x00\x00aX\x01\x00\x00\x00ba.", b"\x80\x04("])
def test_malformed_pickle_streams_are_refused_not_crashing(stream):
    # APPEND on an empty stack, APPEND onto a string, a MARK never closed: refused as unsafe data
    from Data.npz_objects import UnsafeObjectArray, _interpret

    with pytest.raises(UnsafeObjectArray, match="malformed pickle|no STOP"):
        _interpret(stream, "x.npz")
