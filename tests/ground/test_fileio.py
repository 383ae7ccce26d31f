"""fileio's checks before anything is written."""

import os

import pytest

from banglaslm.errors import UserError
from banglaslm.fileio import check_writable


def test_a_read_only_file_system_is_named_as_such(tmp_path, monkeypatch):
    """A read-only mount was called 'not writable by this user', which sends one to fix permissions."""
    class ReadOnly:
        f_flag = os.ST_RDONLY

    monkeypatch.setattr(os, "access", lambda path, mode: False)
    monkeypatch.setattr(os, "statvfs", lambda path: ReadOnly())
    with pytest.raises(UserError, match=f"cannot write {tmp_path / 'out'}: {tmp_path} is on a read-only file system; "
                                        "choose another output path"):
        check_writable(tmp_path / "out")
    ReadOnly.f_flag = 0
    with pytest.raises(UserError, match="is not writable by this user"):
        check_writable(tmp_path / "out")
