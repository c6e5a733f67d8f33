"""The Python API as the README shows it: the README's example runs as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import PROJECT_ROOT

import semseg
from semseg.errors import SemsegError


def readme_example() -> str:
    text = (PROJECT_ROOT / "README.md").read_text()
    match = re.search(r"<!-- api-example[^>]*-->\n```python\n(.*?)```", text, re.S)
    assert match, "README has no api-example block"
    return match.group(1)


def test_readme_example_runs_as_written(tmp_path: Path):
    script = tmp_path / "example.py"
    script.write_text(readme_example())
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    shapes, maxf = result.stdout.strip().splitlines()[-2:]
    assert shapes.startswith("(2, 60, 200) (60, 200)")
    assert 0.0 <= float(maxf.removeprefix("MaxF ")) <= 100.0


def test_segmenter_matches_the_predictor_and_accepts_every_image_kind(tiny_run: Path):
    from PIL import Image

    from semseg.inference.predictor import Predictor

    best = tiny_run / "checkpoints" / "best.ckpt"
    path = sorted((tiny_run / "data" / "training" / "image_2").glob("*.png"))[0]
    segmenter = semseg.Segmenter.from_checkpoint(best)
    array = np.asarray(Image.open(path).convert("RGB"))
    direct = next(Predictor(semseg.load_checkpoint(best)).predict([array]))
    for image in (path, str(path), Image.open(path), array):
        result = segmenter.predict(image)
        np.testing.assert_allclose(result.probabilities, direct, atol=1e-6)
        assert np.array_equal(result.labels, direct.argmax(axis=0))
        np.testing.assert_allclose(result.probabilities.sum(axis=0), 1.0, atol=1e-5)


def test_api_errors_are_semseg_errors(tmp_path: Path):
    with pytest.raises(SemsegError, match="not found"):
        semseg.load_checkpoint(tmp_path / "missing.ckpt")
    with pytest.raises(SemsegError, match="train.lr"):
        semseg.load_config("demo", ["train.lr=-1"])
    with pytest.raises(SemsegError, match="uint8"):
        from semseg.api import as_rgb_array

        as_rgb_array(np.zeros((4, 4), dtype=np.float32))


def test_import_semseg_is_light():
    code = "import sys, semseg; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False"
