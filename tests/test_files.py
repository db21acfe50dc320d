import os
import stat

import pytest

from search_gym.files import atomic_output, write_bytes_atomic, write_text_atomic


def test_atomic_writes_use_the_umask_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_bytes_atomic(tmp_path / "sub" / "a.bin", b"\x00data")
        assert path.read_bytes() == b"\x00data"
        assert stat.S_IMODE(path.stat().st_mode) == 0o644  # readable by others, like open(path, "w")
        write_text_atomic(path, "new")
        assert path.read_text() == "new"
    finally:
        os.umask(old)


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = write_text_atomic(tmp_path / "a.txt", "old")
    with pytest.raises(RuntimeError, match="interrupted"), atomic_output(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]
