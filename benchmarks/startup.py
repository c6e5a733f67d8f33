"""How long a fresh ``semseg predict`` process takes before its first image, with its artefacts
cached, for this checkout and an earlier commit side by side.

Each checkpoint and flag set is first run once by each code version to fill its own cache folder
(the int8 model, the ONNX export, the backend choice: the versions' cache keys may differ); then,
round-robin, every version runs the same command ``--repeats`` times on its cache. "first PNG"
counts from the process start to the first output file (``--batch-size 1``: import, checkpoint
load, backend, one image); medians are reported, with the ratio earlier / now. The earlier
commit runs from a ``git worktree`` through ``PYTHONPATH`` (the same installed libraries).

    python3 benchmarks/startup.py --before 00ed173 --checkpoint vgg16=VGG16.ckpt \
        --checkpoint resnet18=R18.ckpt --out startup.md
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import KITTI_DATA, ROOT, machine_summary, number

CASES = {
    "int8": ["--precision", "int8"],
    "auto": ["--backend", "auto"],
    "torch": ["--backend", "torch"],
    "torch-int8": ["--backend", "torch", "--precision", "int8"],
}


def copy_images(data: Path, count: int, folder: Path) -> None:
    source = sorted((data / "training" / "image_2").glob("*.png"))
    if not source:
        raise SystemExit(f"no KITTI images under {data}/training/image_2")
    folder.mkdir(parents=True, exist_ok=True)
    for path in source[:count]:
        shutil.copy(path, folder / path.name)


def predict(
    src: Path | None, checkpoint: Path, images: Path, cache: Path, flags: list[str], out: Path
) -> dict[str, Any]:
    """One fresh process: wall seconds, seconds to the first PNG and the backend line."""
    env = {**os.environ, "SEMSEG_CACHE_DIR": str(cache), "SEMSEG_AUTO_BUILD": "1"}
    env["PYTHONWARNINGS"] = "ignore"
    if src is not None:
        env["PYTHONPATH"] = str(src)
    command = [sys.executable, "-m", "semseg.cli", "predict", str(checkpoint), str(images),
               "--out", str(out), "--batch-size", "1", *flags]  # fmt: skip
    shutil.rmtree(out, ignore_errors=True)
    start = time.time()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.time() - start
    pngs = [p.stat().st_mtime for p in out.rglob("*.png")]
    if done.returncode != 0 or not pngs:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    backend = next((line for line in done.stderr.splitlines() if line.startswith("backend: ")), "")
    return {"wall_s": wall, "first_png_s": min(pngs) - start, "backend": backend}


def worktree(ref: str, folder: Path) -> Path:
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(folder), ref],
                   check=True, capture_output=True)  # fmt: skip
    return folder / "src"


def check_version(src: Path | None, expected: Path) -> None:
    """The process imports semseg from where this benchmark says it does."""
    env = {**os.environ, **({"PYTHONPATH": str(src)} if src else {})}
    code = "import semseg, pathlib; print(pathlib.Path(semseg.__file__).resolve())"
    found = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if not found.stdout.strip().startswith(str(expected.resolve())):
        raise SystemExit(f"semseg is imported from {found.stdout.strip()}, not {expected}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", action="append", required=True, help="NAME=PATH")
    parser.add_argument("--cases", nargs="+", choices=tuple(CASES), default=list(CASES)[:2])
    parser.add_argument("--before", help="an earlier commit to run side by side")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--data", type=Path, default=KITTI_DATA)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    checkpoints = dict(item.split("=", 1) for item in args.checkpoint)
    with tempfile.TemporaryDirectory(prefix="semseg-startup-") as temp:
        work = Path(temp)
        copy_images(args.data, args.images, work / "images")
        versions: dict[str, Path | None] = {"now": None}
        check_version(None, ROOT / "src")
        if args.before:
            versions[f"before ({args.before})"] = worktree(args.before, work / "before")
            check_version(versions[f"before ({args.before})"], work / "before" / "src")
        try:
            rows = measure(args, checkpoints, versions, work)
        finally:
            if args.before:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                                str(work / "before")], capture_output=True)  # fmt: skip
    report = render(rows, args, list(versions))
    print(report)
    if args.out:
        args.out.write_text(report + "\n")
        args.out.with_suffix(".json").write_text(json.dumps(rows, indent=2))
    return 0


def measure(args, checkpoints: dict[str, str], versions: dict[str, Path | None], work: Path):
    rows = []
    for name, checkpoint in checkpoints.items():
        for case in args.cases:
            flags = CASES[case]
            # one cache per version: their cache keys may differ, and a version that finds the
            # other's entry stale would rebuild it on every run
            caches = {version: work / f"cache-{name}-{len(rows)}-{index}"
                      for index, version in enumerate(versions)}  # fmt: skip
            for version, src in versions.items():
                primed = predict(src, Path(checkpoint), work / "images", caches[version], flags,
                                 work / "out")  # fmt: skip
                print(f"{name} {case} {version}: primed in {primed['wall_s']:.1f} s", flush=True)
            runs: dict[str, list[dict[str, Any]]] = {version: [] for version in versions}
            for repeat in range(args.repeats):
                for version, src in versions.items():
                    result = predict(src, Path(checkpoint), work / "images", caches[version],
                                     flags, work / "out")  # fmt: skip
                    runs[version].append(result)
                    log(version, repeat, result)
            rows.append({"model": name, "case": case, "runs": runs})
    return rows


def log(version: str, repeat: int, result: dict[str, Any]) -> None:
    first, wall = result["first_png_s"], result["wall_s"]
    print(f"  {version} #{repeat + 1}: first PNG {first:.2f} s, wall {wall:.2f} s, "
          f"{result['backend']}", flush=True)  # fmt: skip


def render(rows: list[dict[str, Any]], args, versions: list[str]) -> str:
    lines = [
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {machine_summary('2 threads')}; "
        f"{args.images} KITTI images, batch 1, medians of {args.repeats} fresh processes on a "
        "warm cache.",
        "",
        "| model | flags | code | first PNG s | wall s | backend |",
        "|---|---|---|---:|---:|---|",
    ]
    for row in rows:
        head = f"| {row['model']} | {' '.join(CASES[row['case']])} |"
        medians = {}
        for version in versions:
            runs = row["runs"][version]
            medians[version] = statistics.median(r["first_png_s"] for r in runs)
            wall = statistics.median(r["wall_s"] for r in runs)
            backend = runs[-1]["backend"].removeprefix("backend: ")
            cells = f"{number(medians[version], 2)} | {number(wall, 2)} | {backend}"
            lines.append(f"{head} {version} | {cells} |")
        if len(versions) == 2:
            ratio = medians[versions[1]] / medians[versions[0]]
            lines.append(f"{head} ratio before / now | {ratio:.2f}x | | |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
