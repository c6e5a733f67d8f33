"""Box annotations: COCO detection JSON and Pascal VOC XML, read and written.

A :class:`Box` holds integer pixel bounds ``[x0, x1) x [y0, y1)`` and a training class id.

* COCO (Lin et al., ECCV 2014): one JSON file with ``images`` (``id``, ``file_name``, ``width``,
  ``height``), ``categories`` (``id``, ``name``) and ``annotations`` (``image_id``,
  ``category_id``, ``bbox`` = ``[x, y, w, h]`` in pixels). Categories are matched to the class
  table by name. Fractional boxes are widened to whole pixels.
* Pascal VOC (Everingham et al., IJCV 2010): one ``NAME.xml`` per image with ``size``
  (``width``, ``height``) and ``object`` entries (``name``, ``bndbox`` with ``xmin``, ``ymin``,
  ``xmax``, ``ymax``: 1-based, inclusive pixel coordinates).

Images are identified by their file stem (``um_000000``), as in the data folders. A box outside
its image, a class name not in the class table (or the background class, which gets no boxes)
and an image of the data without an annotation are errors; with ``skip_bad`` such images are
left out and counted instead (:attr:`BoxSet.skipped`).
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from semseg.errors import SemsegError
from semseg.io import write_json_atomic, write_text_atomic


@dataclass(frozen=True)
class Box:
    """An axis-aligned box ``[x0, x1) x [y0, y1)`` in pixels, labelled with a training id."""

    x0: int
    y0: int
    x1: int
    y1: int
    label: int

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def area(self) -> int:
        return self.width * self.height

    @property
    def slices(self) -> tuple[slice, slice]:
        """``(rows, cols)`` to index an ``(H, W)`` array with."""
        return slice(self.y0, self.y1), slice(self.x0, self.x1)

    def coco_bbox(self) -> list[int]:
        return [self.x0, self.y0, self.width, self.height]


@dataclass(frozen=True)
class ImageBoxes:
    """The boxes of one image, with the image size the annotation states."""

    name: str  # file stem
    width: int
    height: int
    boxes: tuple[Box, ...]
    file_name: str = ""  # as written in the annotation (COCO ``file_name``, VOC ``filename``)


@dataclass
class BoxSet:
    """Every annotated image by name, and the images skipped by ``skip_bad`` with the reason."""

    images: dict[str, ImageBoxes]
    skipped: dict[str, str] = field(default_factory=dict)


def check_box(box: Box, width: int, height: int, where: str) -> None:
    """Refuse an empty box or one reaching outside its ``width x height`` image."""
    if box.width <= 0 or box.height <= 0:
        raise SemsegError(f"{where}: empty box {box.coco_bbox()} (x, y, w, h)")
    if box.x0 < 0 or box.y0 < 0 or box.x1 > width or box.y1 > height:
        raise SemsegError(
            f"{where}: box {box.coco_bbox()} (x, y, w, h) is outside the {width}x{height} image"
        )


def class_lookup(names: Sequence[str], background: int | None) -> dict[str, int]:
    """Class name -> training id, the background class left out (it gets no boxes)."""
    return {name: index for index, name in enumerate(names) if index != background}


def class_id(name: str, lookup: Mapping[str, int], names: Sequence[str], where: str) -> int:
    if name in lookup:
        return lookup[name]
    if name in names:
        raise SemsegError(f"{where}: class {name!r} is the background class and takes no boxes")
    raise SemsegError(f"{where}: unknown class name {name!r} (class table: {', '.join(lookup)})")


# --- COCO ---------------------------------------------------------------------------------------


def read_coco(
    path: str | Path,
    names: Sequence[str],
    background: int | None = None,
    image_names: Iterable[str] | None = None,
    skip_bad: bool = False,
) -> BoxSet:
    """The boxes of a COCO detection JSON file (see module docstring).

    ``image_names``: the images of the data; each needs an entry in the file (an entry with no
    annotations means an image without objects). Entries for other images are ignored.
    """
    path = Path(path)
    raw = _load_json(path)
    lookup = class_lookup(names, background)
    categories = {}
    for entry in _list(raw, "categories", path):
        try:
            categories[int(entry["id"])] = str(entry["name"])
        except (KeyError, TypeError, ValueError) as error:
            raise SemsegError(f"{path}: bad category {entry!r} (needs id and name)") from error
    images: dict[int, dict[str, Any]] = {}
    for entry in _list(raw, "images", path):
        try:
            image_id, file_name = int(entry["id"]), str(entry["file_name"])
            size = int(entry["width"]), int(entry["height"])
        except (KeyError, TypeError, ValueError) as error:
            raise SemsegError(
                f"{path}: bad image entry {entry!r} (needs id, file_name, width, height)"
            ) from error
        images[image_id] = {"file_name": file_name, "size": size, "boxes": [], "error": None}
    for entry in _list(raw, "annotations", path):
        _add_coco_annotation(entry, images, categories, lookup, names, path)
    box_set = BoxSet(images={})
    for image in images.values():
        name = Path(image["file_name"]).stem
        if name in box_set.images:
            raise SemsegError(f"{path}: image {name!r} appears twice")
        if image["error"] is not None:
            if not skip_bad:
                raise SemsegError(image["error"])
            box_set.skipped[name] = image["error"]
            continue
        width, height = image["size"]
        box_set.images[name] = ImageBoxes(
            name, width, height, tuple(image["boxes"]), image["file_name"]
        )
    return _require_images(box_set, image_names, path, skip_bad)


def _add_coco_annotation(
    entry: Any,
    images: dict[int, dict[str, Any]],
    categories: Mapping[int, str],
    lookup: Mapping[str, int],
    names: Sequence[str],
    path: Path,
) -> None:
    """Append one annotation's box to its image, or note the image's first error."""
    try:
        image_id, category_id = int(entry["image_id"]), int(entry["category_id"])
        x, y, w, h = (float(v) for v in entry["bbox"])
    except (KeyError, TypeError, ValueError) as error:
        raise SemsegError(
            f"{path}: bad annotation {entry!r} (needs image_id, category_id, bbox)"
        ) from error
    if image_id not in images:
        raise SemsegError(f"{path}: annotation for image id {image_id}, which is not in images")
    if category_id not in categories:
        raise SemsegError(f"{path}: annotation with category id {category_id}, not in categories")
    image = images[image_id]
    if image["error"] is not None:
        return
    where = f"{path}: image {image['file_name']}"
    width, height = image["size"]
    try:
        if not all(math.isfinite(v) for v in (x, y, w, h)):
            raise SemsegError(f"{where}: box {[x, y, w, h]} is not finite")
        label = class_id(categories[category_id], lookup, names, where)
        box = Box(math.floor(x), math.floor(y), math.ceil(x + w), math.ceil(y + h), label)
        check_box(box, width, height, where)
    except SemsegError as error:
        image["error"] = str(error)
        return
    image["boxes"].append(box)


def coco_image_entry(image_id: int, image: Any) -> dict[str, Any]:
    """The COCO ``images`` entry of one image (anything with name, file_name, width, height)."""
    return {
        "id": image_id,
        "file_name": image.file_name or f"{image.name}.png",
        "width": image.width,
        "height": image.height,
    }


def write_coco(
    path: str | Path, images: Sequence[ImageBoxes], names: Sequence[str], background: int | None
) -> None:
    """Write boxes as COCO detection JSON (category id = training id + 1), atomically."""
    categories = [
        {"id": index + 1, "name": name} for index, name in enumerate(names) if index != background
    ]
    image_entries, annotations = [], []
    for image_id, image in enumerate(images, start=1):
        image_entries.append(coco_image_entry(image_id, image))
        for box in image.boxes:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": box.label + 1,
                    "bbox": box.coco_bbox(),
                    "area": box.area,
                    "iscrowd": 0,
                }
            )
    payload = {"images": image_entries, "annotations": annotations, "categories": categories}
    write_json_atomic(path, payload)


def _load_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise SemsegError(f"box file not found: {path}")
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SemsegError(f"{path} is not a COCO JSON file: {error}") from error
    if not isinstance(raw, dict):
        raise SemsegError(f"{path} is not a COCO JSON file (expected an object)")
    return raw


def _list(raw: Mapping[str, Any], key: str, path: Path) -> list[Any]:
    value = raw.get(key)
    if not isinstance(value, list):
        raise SemsegError(f"{path}: COCO JSON needs a {key!r} list")
    return value


# --- Pascal VOC ---------------------------------------------------------------------------------


def read_voc(
    folder: str | Path,
    names: Sequence[str],
    background: int | None = None,
    image_names: Iterable[str] | None = None,
    skip_bad: bool = False,
) -> BoxSet:
    """The boxes of a folder of Pascal VOC XML files, ``NAME.xml`` per image (module docstring).

    ``image_names``: the images of the data; each needs its ``NAME.xml``. Without it, every XML
    file of the folder is read.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise SemsegError(f"box folder not found: {folder}")
    wanted = sorted(image_names) if image_names is not None else None
    paths = (
        [folder / f"{name}.xml" for name in wanted]
        if wanted is not None
        else sorted(folder.glob("*.xml"))
    )
    if not paths:
        raise SemsegError(f"no Pascal VOC XML files in {folder}")
    lookup = class_lookup(names, background)
    box_set = BoxSet(images={})
    for path in paths:
        try:
            if not path.is_file():
                raise SemsegError(f"image {path.stem} has no annotation file {path}")
            box_set.images[path.stem] = _read_voc_file(path, lookup, names)
        except SemsegError as error:
            if not skip_bad:
                raise
            box_set.skipped[path.stem] = str(error)
    return box_set


def _read_voc_file(path: Path, lookup: Mapping[str, int], names: Sequence[str]) -> ImageBoxes:
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as error:
        raise SemsegError(f"{path} is not a Pascal VOC XML file: {error}") from error
    try:
        width = int(_text(root, "size/width"))
        height = int(_text(root, "size/height"))
    except ValueError as error:
        raise SemsegError(f"{path}: size/width and size/height must be integers") from error
    boxes = []
    for obj in root.findall("object"):
        label = class_id(_text(obj, "name"), lookup, names, str(path))
        try:
            xmin, ymin, xmax, ymax = (
                round(float(_text(obj, f"bndbox/{key}")))
                for key in ("xmin", "ymin", "xmax", "ymax")
            )
        except ValueError as error:
            raise SemsegError(f"{path}: bndbox coordinates must be numbers") from error
        box = Box(xmin - 1, ymin - 1, xmax, ymax, label)
        check_box(box, width, height, str(path))
        boxes.append(box)
    file_name = root.findtext("filename") or f"{path.stem}.png"
    return ImageBoxes(path.stem, width, height, tuple(boxes), file_name)


def _text(element: ET.Element, key: str) -> str:
    value = element.findtext(key)
    if value is None or not value.strip():
        raise SemsegError(f"Pascal VOC XML: missing <{key}>")
    return value.strip()


def write_voc(folder: str | Path, images: Sequence[ImageBoxes], names: Sequence[str]) -> None:
    """Write one Pascal VOC ``NAME.xml`` per image into ``folder``, atomically."""
    for image in images:
        root = ET.Element("annotation")
        ET.SubElement(root, "filename").text = image.file_name or f"{image.name}.png"
        size = ET.SubElement(root, "size")
        ET.SubElement(size, "width").text = str(image.width)
        ET.SubElement(size, "height").text = str(image.height)
        ET.SubElement(size, "depth").text = "3"
        for box in image.boxes:
            obj = ET.SubElement(root, "object")
            ET.SubElement(obj, "name").text = names[box.label]
            bndbox = ET.SubElement(obj, "bndbox")
            for key, value in (
                ("xmin", box.x0 + 1),
                ("ymin", box.y0 + 1),
                ("xmax", box.x1),
                ("ymax", box.y1),
            ):
                ET.SubElement(bndbox, key).text = str(value)
        ET.indent(root)
        text = ET.tostring(root, encoding="unicode") + "\n"
        write_text_atomic(Path(folder) / f"{image.name}.xml", text)


# --- either format ------------------------------------------------------------------------------


def read_boxes(
    path: str | Path,
    names: Sequence[str],
    background: int | None = None,
    image_names: Iterable[str] | None = None,
    skip_bad: bool = False,
) -> BoxSet:
    """COCO JSON (a ``.json`` file) or Pascal VOC XML (a folder of ``NAME.xml``)."""
    path = Path(path)
    if path.is_dir():
        return read_voc(path, names, background, image_names, skip_bad)
    if path.suffix.lower() == ".json":
        return read_coco(path, names, background, image_names, skip_bad)
    if not path.exists():
        raise SemsegError(f"box file not found: {path}")
    raise SemsegError(
        f"--boxes {path}: expected a COCO .json file or a folder of Pascal VOC .xml files"
    )


def _require_images(
    box_set: BoxSet, image_names: Iterable[str] | None, path: Path, skip_bad: bool
) -> BoxSet:
    """Keep the annotations of ``image_names``; an image without one is an error or skipped."""
    if image_names is None:
        return box_set
    wanted = list(image_names)
    missing = [n for n in wanted if n not in box_set.images and n not in box_set.skipped]
    if missing and not skip_bad:
        raise SemsegError(
            f"{len(missing)} image(s) have no annotation in {path}, first: {missing[0]} "
            "(use --skip-bad to skip them)"
        )
    for name in missing:
        box_set.skipped[name] = f"image {name} has no annotation in {path}"
    wanted_set = set(wanted)
    box_set.images = {n: b for n, b in box_set.images.items() if n in wanted_set}
    box_set.skipped = {n: r for n, r in box_set.skipped.items() if n in wanted_set}
    return box_set


__all__ = [
    "Box",
    "BoxSet",
    "ImageBoxes",
    "check_box",
    "read_boxes",
    "read_coco",
    "read_voc",
    "write_coco",
    "write_voc",
]
