"""``lamed download`` against a local fake Hugging Face cache with HF_HUB_OFFLINE=1."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import pytest


def _fake_cache(cache: Path, repo: str, files: dict, repo_type: str = "datasets", rev: str = "0123abcd") -> Path:
    """The layout huggingface_hub reads: <type>--<org>--<name>/snapshots/<rev>/... + refs/main."""
    org, name = repo.split("/")
    base = cache / f"{repo_type}--{org}--{name}"
    snap = base / "snapshots" / rev
    for rel, data in files.items():
        p = snap / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    (base / "refs").mkdir(parents=True, exist_ok=True)
    (base / "refs" / "main").write_text(rev, encoding="utf-8")
    return snap


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


def test_download_offline_from_cache_links_the_layout(offline_cache, tmp_path, capsys):
    from LaMed.cli import main

    _fake_cache(
        offline_cache,
        "ibrahimhamamci/CT-RATE",
        {
            "dataset/radiology_text_reports/train_reports.csv": b"VolumeName,Findings_EN\n",
            "dataset/metadata/train_metadata.csv": b"VolumeName\n",
            "dataset/valid_fixed/valid_1/valid_1_a/valid_1_a_1.nii.gz": b"vol",
            "dataset/train_fixed/train_1/train_1_a/train_1_a_1.nii.gz": b"big",
            "README.md": b"readme",
        },
    )
    out = tmp_path / "raw"
    assert main(["download", "ct_rate", "--out", str(out)]) == 0
    got = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    # default parts: metadata + valid; the train volumes and the README are not selected
    assert got == [
        "dataset/metadata/train_metadata.csv",
        "dataset/radiology_text_reports/train_reports.csv",
        "dataset/valid_fixed/valid_1/valid_1_a/valid_1_a_1.nii.gz",
    ]
    assert (out / "dataset/valid_fixed/valid_1/valid_1_a/valid_1_a_1.nii.gz").read_bytes() == b"vol"
    assert os.path.islink(out / "dataset/metadata/train_metadata.csv")  # no second copy of the data
    assert "next: lamed prepare ct_rate" in capsys.readouterr().out
    # a second call is a no-op that still succeeds; --parts train and --copy give real files
    assert main(["download", "ct_rate", "--out", str(out), "--parts", "train", "--copy"]) == 0
    p = out / "dataset/train_fixed/train_1/train_1_a/train_1_a_1.nii.gz"
    assert p.read_bytes() == b"big" and not os.path.islink(p)


def test_download_offline_not_cached_is_a_clear_message(offline_cache, tmp_path, capsys):
    from LaMed.cli import main

    assert main(["download", "m3d_refseg", "--out", str(tmp_path / "x")]) == 2
    msg = capsys.readouterr().out
    assert "GoodBaiBai88/M3D-RefSeg" in msg and "not in the local cache" in msg and "HF_HUB_OFFLINE" in msg
    # cached repository, but the asked part is not: also a clear message
    _fake_cache(offline_cache, "GoodBaiBai88/M3D-VQA", {"README.md": b"r"})
    assert main(["download", "m3d_vqa", "--out", str(tmp_path / "y")]) == 2
    assert "no file of GoodBaiBai88/M3D-VQA matches" in capsys.readouterr().out


def test_download_extract_and_bad_part(offline_cache, tmp_path):
    import io

    from LaMed.data.download import download_dataset

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("0000/0000.json", '{"labels": {}}')
        zf.writestr("0000/case/image.npy", b"x")
    _fake_cache(offline_cache, "GoodBaiBai88/M3D-Seg", {"0000.zip": buf.getvalue(), "1111.zip": b"not a zip"})
    out = tmp_path / "seg"
    s = download_dataset("m3d_seg", out, include=["0000*"], parts=["metadata"], extract=True)
    assert s.extracted == 1 and (out / "0000" / "0000" / "0000.json").read_text(encoding="utf-8") == '{"labels": {}}'
    assert (
        download_dataset("m3d_seg", out, include=["0000*"], parts=["metadata"], extract=True).extracted == 0
    )  # resumable
    with pytest.raises(ValueError, match="unknown part"):
        download_dataset("m3d_seg", out, parts=["volumes"])
    from LaMed.data.download import DownloadError

    with pytest.raises(DownloadError, match="not a valid zip"):
        download_dataset("m3d_seg", tmp_path / "bad", include=["1111*"], parts=["metadata"], extract=True)
