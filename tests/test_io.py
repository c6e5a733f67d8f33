"""Tests of semseg.io's atomic writer: permissions follow the umask, temp names stay short."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from semseg.io import TEMP_PREFIX, atomic_open, write_png_atomic, write_text_atomic


@pytest.fixture
def umask() -> Iterator[Callable[[int], int]]:
    """Set the process umask for one test and put the old one back afterwards."""
    old = os.umask(0o022)
    try:
        yield os.umask
    finally:
        os.umask(old)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path: Path, umask, mask: int, expected: int) -> None:
    umask(mask)
    write_text_atomic(tmp_path / "a.json", "{}\n")
    write_png_atomic(tmp_path / "b.png", np.zeros((4, 4), np.uint8))
    with open(tmp_path / "plain.txt", "w") as stream:  # what any other program would create
        stream.write("x")
    assert mode_of(tmp_path / "a.json") == expected
    assert mode_of(tmp_path / "b.png") == expected
    assert mode_of(tmp_path / "plain.txt") == expected


def test_synthetic_writer_follows_the_umask(tmp_path: Path, umask) -> None:
    from semseg.data.synthetic import write_png_atomic as write_scene_png

    umask(0o022)
    write_scene_png(tmp_path / "scene.png", np.zeros((4, 4, 3), np.uint8))
    assert mode_of(tmp_path / "scene.png") == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["scene.png"]


def test_long_file_names_are_written(tmp_path: Path) -> None:
    """A name of 250 characters (the limit is 255) does not fail on the temp file's name."""
    name = "n" * 246 + ".png"
    write_png_atomic(tmp_path / name, np.zeros((4, 4), np.uint8))
    assert [p.name for p in tmp_path.iterdir()] == [name]
    with atomic_open(tmp_path / name) as stream:
        temps = [p.name for p in tmp_path.iterdir() if p.name != name]
        stream.write(b"new")
    assert len(temps) == 1 and temps[0].startswith(TEMP_PREFIX) and len(temps[0]) <= 30
    assert (tmp_path / name).read_bytes() == b"new"


def test_failed_write_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    write_text_atomic(target, "old")
    with pytest.raises(RuntimeError), atomic_open(target) as stream:
        stream.write(b"half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_a_full_disk_is_named_and_leaves_the_old_file(tmp_path: Path) -> None:
    """ENOSPC from the writer becomes a one-line error that says the disk is full; the target
    keeps its old content and no temp file is left."""
    import errno

    from semseg.errors import SemsegError

    target = tmp_path / "best.ckpt"
    write_text_atomic(target, "old")
    with pytest.raises(SemsegError, match="no space left on the disk"), atomic_open(target):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["best.ckpt"]


def test_a_library_short_write_on_a_full_disk_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch's zip writer reports a short write as "unexpected pos"; with (almost) nothing free
    it is a full disk, with space free it stays the library's own error."""
    import shutil
    from collections import namedtuple

    from semseg import io as semseg_io
    from semseg.errors import SemsegError

    usage = namedtuple("usage", "total used free")
    short_write = "[enforce fail at inline_container.cc:672] . unexpected pos 66681472 vs 66681360"
    monkeypatch.setattr(semseg_io.shutil, "disk_usage", lambda _: usage(10**9, 10**9, 112))
    with pytest.raises(SemsegError, match="no space left"), atomic_open(tmp_path / "a.ckpt"):
        raise RuntimeError(short_write)
    monkeypatch.undo()
    assert shutil.disk_usage(tmp_path).free > semseg_io.DISK_FULL_BYTES
    with pytest.raises(RuntimeError, match="unexpected pos"), atomic_open(tmp_path / "a.ckpt"):
        raise RuntimeError(short_write)
    assert list(tmp_path.iterdir()) == []
