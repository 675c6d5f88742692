r"""A folder of images as people keep them: ``data.name=image_folder`` with ``data.options.path``.

.. code-block:: bash

    injflow fit --set data.name=image_folder data.options.path=photos/ 'data.options.size=[32, 32]' ...
    injflow fit --set data.name=image_folder data.options.path=pets/ model.conditional=true ...   # pets/cat/, pets/dog/

PNG and JPEG files (also BMP, GIF, TIFF, WebP: whatever Pillow reads) are read in sorted order, converted to
grayscale or RGB (``mode``; default: RGB if any image has colour), resized to the declared ``size`` ``[H, W]`` (needed
when the images differ in size; Lanczos filter, the whole picture, no crop) and scaled from 8 bits to the model's
image range [0, 1]. Sub-folders are classes (sorted names → 0, 1, ...), so a conditional model can use them; files
directly in ``path`` and in sub-folders at once are refused. A seeded shuffle splits off ``n_val`` / ``n_test`` as for
``data.name=array``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import OptionError
from .arrays import seeded_splits
from .registry import register
from .splits import DataSplits

__all__ = ["IMAGE_SUFFIXES", "find_images", "load_image_folder", "read_image"]

#: File types read as images (lower-case suffixes).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
_MODES = ("auto", "grayscale", "rgb")


def _option(name: str, message: str) -> OptionError:
    return OptionError(message, key=name)


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not p.name.startswith("."))


def find_images(path: str | Path) -> tuple[list[Path], list[int] | None, list[str] | None]:
    """The image files of a folder: ``(files, labels, classes)``; sub-folders are classes (``labels`` index into the
    sorted ``classes``), files directly in the folder have no labels.

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> root = Path(tempfile.mkdtemp())
        >>> for name in ("cat/a.png", "cat/b.png", "dog/c.jpg"):
        ...     (root / name).parent.mkdir(exist_ok=True)
        ...     Image.new("L", (4, 4)).save(root / name)
        >>> files, labels, classes = find_images(root)
        >>> [f.name for f in files], labels, classes
        (['a.png', 'b.png', 'c.jpg'], [0, 0, 1], ['cat', 'dog'])
    """
    path = Path(path)
    if not path.is_dir():
        what = "is a file: for a table or an array use data.name=array" if path.is_file() else "does not exist"
        raise _option("path", f"{path} {what}")
    top = _images_in(path)
    folders = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".") and _images_in(p))
    if top and folders:
        raise _option("path", f"{path} has images both directly inside ({top[0].name}...) and in sub-folders "
                              f"({folders[0].name}/...): put every image in a class folder, or none")
    if top:
        return top, None, None
    if not folders:
        raise _option("path", f"{path} holds no images ({', '.join(IMAGE_SUFFIXES)}), directly or in sub-folders")
    files, labels = [], []
    for k, folder in enumerate(folders):
        found = _images_in(folder)
        files += found
        labels += [k] * len(found)
    return files, labels, [f.name for f in folders]


def read_image(path: Path, *, mode: str, size: tuple[int, int] | None) -> np.ndarray:
    """One image as uint8 ``(C, H, W)`` in ``mode`` (``grayscale``: C = 1, ``rgb``: C = 3), resized to ``size``."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("L" if mode == "grayscale" else "RGB")
            if size is not None and img.size != (size[1], size[0]):
                img = img.resize((size[1], size[0]), Image.Resampling.LANCZOS)
            array = np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as e:
        raise _option("path", f"{path} is not a readable image ({e})") from None
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def _has_colour(path: Path) -> bool:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return img.mode not in ("1", "L", "LA", "I", "I;16", "F") and not (img.mode == "P" and _grey_palette(img))
    except (UnidentifiedImageError, OSError) as e:
        raise _option("path", f"{path} is not a readable image ({e})") from None


def _grey_palette(img: Any) -> bool:
    palette = np.asarray(img.getpalette() or [], dtype=np.int64).reshape(-1, 3)
    return bool((palette[:, :1] == palette).all())


@register("image_folder")
def load_image_folder(
    *,
    seed: int,
    root: str | Path | None,
    download: bool,
    path: str | None = None,
    size: list[int] | None = None,
    mode: str = "auto",
    flatten: bool = False,
    n_val: float = 0.1,
    n_test: float = 0.1,
) -> DataSplits:
    r"""A folder of images (see the module docstring), in [0, 1].

    Arguments:
        path: The folder (sub-folders are classes).
        size: ``[H, W]`` every image is resized to (default: their common size; needed when they differ).
        mode: ``grayscale``, ``rgb`` or ``auto`` (RGB if any image has colour).
        flatten: Rows of C·H·W values instead of ``(C, H, W)`` images.
        n_val, n_test: Validation and test shares (fractions in [0, 1)) or counts, split off after a seeded shuffle.
    """
    if path is None:
        raise _option("path", "data.name=image_folder needs data.options.path=<folder of images>")
    if mode not in _MODES:
        raise _option("mode", f"expected one of {', '.join(_MODES)}, got {mode!r}")
    if not isinstance(flatten, bool):
        raise _option("flatten", f"must be true or false, got {flatten!r}")
    if size is not None:
        if (not isinstance(size, (list, tuple)) or len(size) != 2
                or not all(isinstance(s, int) and not isinstance(s, bool) and 1 <= s <= 4096 for s in size)):
            raise _option("size", f"expected [H, W] with whole numbers between 1 and 4096, got {size!r}")
        size = (int(size[0]), int(size[1]))
    files, labels, classes = find_images(path)
    if mode == "auto":
        mode = "rgb" if any(_has_colour(f) for f in files) else "grayscale"
    images = [read_image(f, mode=mode, size=size) for f in files]
    shapes = sorted({im.shape for im in images})
    if len(shapes) > 1:
        first = next(f for f, im in zip(files, images) if im.shape == shapes[0])
        other = next(f for f, im in zip(files, images) if im.shape == shapes[-1])
        raise _option("size", f"the images differ in size ({first.name}: {shapes[0][1]}x{shapes[0][2]}, {other.name}: "
                              f"{shapes[-1][1]}x{shapes[-1][2]}): declare the size to resize them to, e.g. "
                              f"data.options.size=[{shapes[0][1]}, {shapes[0][2]}]")
    x = torch.from_numpy(np.stack(images)).float().div_(255.0)
    image_shape = tuple(x.shape[1:])
    if flatten:
        x = x.flatten(1)
    target = None if labels is None else torch.tensor(labels, dtype=torch.int64)
    splits = seeded_splits(x, target, seed=seed, n_val=n_val, n_test=n_test, source=path)
    info: dict[str, Any] = {"source": str(path), "files": len(files), "mode": mode,
                            "value_range": "[0, 1]: 8-bit values / 255", "size": list(image_shape[1:])}
    if classes is not None:
        info.update(classes=classes, num_classes=len(classes))
    return DataSplits(name="image_folder", kind="image", data_shape=tuple(x.shape[1:]), info=info, image_shape=image_shape,
                      **splits)
