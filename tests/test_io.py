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
