"""The one atomic writer: old-or-new file, never a partial one; umask honoured; clear disk-full message."""

import errno
import os
import stat

import numpy as np
import pytest

from LaMed.utils.atomic import (
    OutputError,
    atomic_path,
    atomic_write_bytes,
    check_writable_dir,
    save_npy_atomic,
    write_json_atomic,
)


def test_failed_write_leaves_existing_file_and_no_temporary(tmp_path):
    target = tmp_path / "mask.nii"
    target.write_bytes(b"previous result")

    def disk_full(fh):
        fh.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OutputError, match="no space left") as info:
        atomic_write_bytes(target, disk_full)
    assert str(target) in str(info.value)
    assert target.read_bytes() == b"previous result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.nii"]


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_written_files_honour_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        path = save_npy_atomic(tmp_path / "a.npy", np.zeros(3))
        with atomic_path(tmp_path / "b.bin") as tmp:
            tmp.write_bytes(b"x")
    finally:
        os.umask(old)
    for p in (path, tmp_path / "b.bin"):
        assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask


def test_json_round_trip_and_parent_creation(tmp_path):
    path = write_json_atomic(tmp_path / "deep" / "x.json", {"a": [1, 2], "é": "ü"})
    assert path.read_text(encoding="utf-8").startswith("{")
    import json

    assert json.loads(path.read_text(encoding="utf-8")) == {"a": [1, 2], "é": "ü"}


def test_output_under_a_regular_file_is_refused_up_front(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="regular file"):
        check_writable_dir(blocker / "out")
    with pytest.raises(OutputError, match="regular file"):
        check_writable_dir(blocker)
    with pytest.raises(OutputError, match="not a folder|regular file"):
        atomic_write_bytes(blocker / "x.json", b"{}")
