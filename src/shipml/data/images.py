"""Image data sets as tables: class folders or .npz arrays become one float32 column per pixel.

Pixel columns are named ``pixel_<row>_<col>_<channel>`` in row-major (height, width, channels)
order, so ``row.reshape(height, width, channels)`` gives the image back. Values keep the images'
own 0-255 scale (16-bit grayscale is divided by 257, so it lands in 0-255 too, with fractions).
Alpha is composited onto white; images are turned upright by their EXIF orientation; resizing
uses Pillow's Lanczos filter and stretches (no cropping).
"""

from __future__ import annotations

import base64
import binascii
import io
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from PIL import Image, ImageOps

from shipml.errors import DataError, InputSchemaError, ShipmlError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
FILE_COLUMN = "file"
_MODES = {1: "L", 3: "RGB"}
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_SUFFIX_TEXT = " ".join(IMAGE_SUFFIXES)
_SEND_HINT = "send a PNG, JPEG, BMP, GIF, TIFF or WebP file, base64-encoded"
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class ImageSpec:
    """The shape every image is brought to, stored with the model; ``resize`` is False when an
    image of another size must be refused rather than resized."""

    height: int
    width: int
    channels: int
    resize: bool = True

    def __post_init__(self) -> None:
        for name in ("height", "width", "channels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DataError(
                    f"image {name} must be a positive integer, not {value!r}", "fix the image size"
                )

    @property
    def n_pixels(self) -> int:
        """Values per image: height × width × channels."""
        return self.height * self.width * self.channels

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, self.channels)

    @property
    def columns(self) -> list[str]:
        """The pixel column names, in row-major (height, width, channels) order."""
        return [
            f"pixel_{r}_{c}_{k}"
            for r in range(self.height)
            for c in range(self.width)
            for k in range(self.channels)
        ]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImageSpec:
        try:
            return cls(data["height"], data["width"], data["channels"], data.get("resize", True))
        except KeyError as err:
            raise DataError(f"image spec lacks {err}: {data!r}", "retrain the model") from None


def _is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def _image_files(folder: Path) -> list[Path]:
    """Image files under ``folder`` at any depth, sorted, skipping hidden files and folders."""
    found = [
        p
        for p in folder.rglob("*")
        if _is_image_file(p)
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    ]
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def _is_deep(mode: str) -> bool:
    """16/32-bit integer or float grayscale, which Pillow's 8-bit conversions would clip."""
    return mode in ("I", "F") or mode.startswith("I;16")


def _is_gray(im: Image.Image) -> bool:
    """Grayscale by mode (a palette image counts when every palette entry is gray)."""
    if im.mode in ("1", "L", "LA", "La") or _is_deep(im.mode):
        return True
    if im.mode in ("P", "PA"):
        pal = im.getpalette() or []
        return pal[0::3] == pal[1::3] == pal[2::3]
    return False


def _oriented_size(im: Image.Image) -> tuple[int, int]:
    """(height, width) after EXIF orientation; EXIF is read only where that needs no decoding."""
    width, height = im.size
    if im.format in ("JPEG", "MPO", "TIFF", "WEBP") and im.getexif().get(0x0112) in (5, 6, 7, 8):
        width, height = height, width
    return height, width


def _on_white(im: Image.Image) -> Image.Image:
    rgba = im.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)


def _pixels(im: Image.Image, spec: ImageSpec, name: str) -> np.ndarray:
    """One decoded image as a float32 (height, width, channels) array in the spec's shape."""
    im = ImageOps.exif_transpose(im)
    scale = 1.0
    if _is_deep(im.mode):
        scale = 1.0 if im.mode == "F" else 257.0
        im = im.convert("F")
    else:
        has_alpha = im.mode in _ALPHA_MODES or "transparency" in im.info
        if im.mode not in ("1", "L", "LA", "P", "PA", "RGB", "RGBA"):  # CMYK, YCbCr, LAB, ...
            im = im.convert("RGBA" if has_alpha else "RGB")
        if has_alpha:
            im = _on_white(im)
        im = im.convert(_MODES[spec.channels])
    if im.size != (spec.width, spec.height):
        if not spec.resize:
            raise _size_error(name, (im.height, im.width), spec)
        im = im.resize((spec.width, spec.height), Image.Resampling.LANCZOS)
    arr = np.asarray(im, dtype=np.float32)
    if scale != 1.0:
        arr = arr / np.float32(scale)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return arr if arr.shape[2] == spec.channels else np.repeat(arr, 3, axis=2)  # deep gray → RGB


def _decode_into(
    rows: np.ndarray,
    files: Sequence[Path],
    names: Sequence[str],
    spec: ImageSpec,
    on_progress: Progress | None,
) -> None:
    """Decode each file into its row of the preallocated ``rows``."""
    for i, (path, name) in enumerate(zip(files, names, strict=True)):
        try:
            with Image.open(path) as im:
                im.load()
                rows[i] = _pixels(im, spec, name).reshape(-1)
        except ShipmlError:
            raise
        except Exception as err:
            raise _unreadable(name, err) from None
        if on_progress is not None:
            on_progress(i + 1, len(files))


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__


def _unreadable(name: str, err: BaseException) -> DataError:
    return DataError(
        f"{name}: cannot be read as an image: {_first_line(err)}", "replace or delete the file"
    )


def _size_error(
    name: str, actual: tuple[int, int], spec: ImageSpec, kind: type[DataError] = InputSchemaError
) -> DataError:
    return kind(
        f"{name} is {actual[0]}x{actual[1]} pixels (height x width), expected "
        f"{spec.height}x{spec.width}",
        "resize the images to one size, or allow resizing",
    )


def _table(rows: np.ndarray, spec: ImageSpec, names: list[str]) -> pd.DataFrame:
    """The pixel columns over the preallocated ``rows`` (no copy), after a ``file`` column."""
    df = pd.DataFrame(rows, columns=spec.columns, copy=False)
    df.insert(0, FILE_COLUMN, names)
    return df


def _check_channels(spec: ImageSpec) -> None:
    if spec.channels not in _MODES:
        raise InputSchemaError(
            f"the model's images have {spec.channels} channels: image files give 1 or 3",
            "send the pixel values instead",
        )


def _accepted_shapes(spec: ImageSpec) -> list[tuple[int, ...]]:
    """One image's shapes that fit the spec: flat, (h, w, c), and (h, w) for one channel."""
    shapes: list[tuple[int, ...]] = [(spec.n_pixels,), spec.shape]
    return [*shapes, (spec.height, spec.width)] if spec.channels == 1 else shapes


def frame_from_images(images: ArrayLike, spec: ImageSpec, what: str = "images") -> pd.DataFrame:
    """The pixel columns of ``images`` (an array or nested lists of numbers): shape
    (n, height, width[, channels]) or (n, n_pixels); ``what`` names them in errors."""
    try:
        arr = np.asarray(images, dtype=np.float32)
    except (TypeError, ValueError):
        raise InputSchemaError(f"{what}: not numbers of one shape", "send pixel values") from None
    if arr.ndim < 2 or arr.shape[1:] not in _accepted_shapes(spec):
        raise InputSchemaError(
            f"{what}: one image has shape {arr.shape[1:]}, expected {spec.shape} (height, width, "
            f"channels) or {spec.n_pixels} values",
            "give images of the model's size and channels",
        )
    rows = arr.reshape(len(arr), spec.n_pixels)
    return pd.DataFrame(rows, columns=spec.columns, copy=False)


def read_image_folder(
    root: str | Path,
    target: str = "label",
    size: tuple[int, int] | None = None,
    channels: int | None = None,
    on_mismatch: Literal["resize", "error"] = "resize",
    on_progress: Progress | None = None,
) -> tuple[pd.DataFrame, ImageSpec]:
    """Read ``root/<class>/<image>`` into a table: ``file`` (path relative to root), the pixel
    columns, and ``target`` (the class folder's name).

    ``size`` is (height, width); None takes the most common size. ``channels`` is 1 or 3; None
    takes 1 when every image is grayscale, else 3. Images of another size are resized, or refused
    when ``on_mismatch`` is "error" (which also refuses grayscale mixed with color when
    ``channels`` is None). ``on_progress(done, total)`` is called after each image.
    """
    root = Path(root)
    if not root.exists():
        raise DataError(f"image folder not found: {root}", "check the path")
    if not root.is_dir():
        raise DataError(f"{root} is not a folder", "give a folder with one sub-folder per class")
    if target == FILE_COLUMN:
        raise DataError(f"target name '{target}' is taken by the file column", "rename the target")
    if channels not in (None, 1, 3):
        raise DataError(f"channels must be 1 or 3, not {channels!r}", "use 1 (gray) or 3 (RGB)")
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    loose = [p.name for p in sorted(root.iterdir()) if p.is_file() and _is_image_file(p)]
    if not classes:
        what = "has images but no class sub-folders" if loose else "has no class sub-folders"
        raise DataError(
            f"{root} {what}", "put each class's images in a sub-folder named after the class"
        )
    if loose:
        raise DataError(
            f"{root}: {len(loose)} image(s) outside the class folders (first: {loose[0]})",
            "move them into the sub-folder of their class, or delete them",
        )
    files: list[Path] = []
    labels: list[str] = []
    for folder in classes:
        found = _image_files(folder)
        if not found:
            raise DataError(
                f"class folder {folder.name!r} in {root} has no images ({_SUFFIX_TEXT})",
                "add images to it, or delete the folder",
            )
        files += found
        labels += [folder.name] * len(found)
    names = [p.relative_to(root).as_posix() for p in files]

    sizes: list[tuple[int, int]] = []
    gray: list[bool] = []
    for path, name in zip(files, names, strict=True):
        try:
            with Image.open(path) as im:
                sizes.append(_oriented_size(im))
                gray.append(_is_gray(im))
        except Exception as err:
            raise _unreadable(name, err) from None
    height, width = size if size is not None else Counter(sizes).most_common(1)[0][0]
    spec = ImageSpec(height, width, channels or (1 if all(gray) else 3), on_mismatch == "resize")
    if not spec.resize:
        odd = next((i for i, s in enumerate(sizes) if s != (height, width)), None)
        if odd is not None:
            raise _size_error(names[odd], sizes[odd], spec, DataError)
        if channels is None and 0 < sum(gray) < len(gray):
            minority = sum(gray) < len(gray) / 2
            odd = gray.index(minority)
            raise DataError(
                f"{names[odd]}: {'grayscale' if minority else 'color'} image among "
                f"{'color' if minority else 'grayscale'} ones",
                "convert the images to one kind, or set the number of channels",
            )
    if target in spec.columns:
        raise DataError(f"target name '{target}' is a pixel column name", "rename the target")
    rows = np.empty((len(files), spec.n_pixels), dtype=np.float32)
    _decode_into(rows, files, names, spec, on_progress)
    df = _table(rows, spec, names)
    df[target] = labels
    return df, spec


def _load_npz(path: Path, needed: Sequence[str]) -> dict[str, np.ndarray]:
    """The named arrays of an .npz archive; DataError when missing, unreadable or pickled."""
    if not path.is_file():
        raise DataError(f"npz file not found: {path}", "check the path")
    try:
        archive = np.load(path, allow_pickle=False)
    except OSError as err:
        raise DataError(f"{path}: cannot read it ({_first_line(err)})", "check the file") from None
    except Exception:
        raise DataError(
            f"{path}: not a NumPy .npz archive",
            "save the arrays with numpy.savez or numpy.savez_compressed",
        ) from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: holds one array, not named arrays", "save it with numpy.savez")
    with archive:
        missing = [name for name in needed if name not in archive.files]
        if missing:
            raise DataError(
                f"{path}: no array named {missing[0]!r} (arrays: {', '.join(archive.files)})",
                "save the images as X and the target under the target's name",
            )
        try:
            return {name: archive[name] for name in needed}
        except Exception as err:  # object arrays need pickle, which shipml never loads
            raise DataError(
                f"{path}: cannot read the arrays ({_first_line(err)})",
                "save numbers, and text labels as a string array (numpy.array(labels, dtype=str))",
            ) from None


def _checked_x(x: np.ndarray, path: Path) -> np.ndarray:
    if x.ndim not in (3, 4) or x.shape[0] == 0:
        raise DataError(
            f"{path}: X has shape {x.shape}; expected (n, height, width) or "
            "(n, height, width, channels) with n > 0",
            "reshape X before saving it",
        )
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool) or np.iscomplexobj(x):
        raise DataError(f"{path}: X holds {x.dtype} values, not numbers", "save X as numbers")
    return x if x.ndim == 4 else x[..., None]


def read_npz(path: str | Path, target: str) -> tuple[pd.DataFrame, ImageSpec]:
    """Read arrays ``X`` (n, height, width[, channels]) and ``target`` (n,) from an .npz file."""
    path = Path(path)
    if target == "X":
        raise DataError("the target cannot be the image array X", "name the target array")
    arrays = _load_npz(path, ["X", target])
    x = _checked_x(arrays["X"], path)
    y = arrays[target]
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(
            f"{path}: X holds {len(x)} images but {target!r} has shape {y.shape}",
            f"give one {target} value per image",
        )
    spec = ImageSpec(x.shape[1], x.shape[2], x.shape[3])
    if target in spec.columns:
        raise DataError(f"target name '{target}' is a pixel column name", "rename the target")
    df = frame_from_images(x, spec)
    df[target] = y.astype(str) if y.dtype.kind == "S" else y
    return df, spec


def read_images_for_prediction(
    path: str | Path, spec: ImageSpec, on_progress: Progress | None = None
) -> pd.DataFrame:
    """Images to score, as ``file`` plus the pixel columns: a folder of images (at any depth, so
    class folders work too), one image file, or an .npz with X (``file`` is then ``name[i]``)."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".npz":
        df = frame_from_images(_checked_x(_load_npz(path, ["X"])["X"], path), spec, str(path))
        df.insert(0, FILE_COLUMN, [f"{path.name}[{i}]" for i in range(len(df))])
        return df
    _check_channels(spec)
    if path.is_dir():
        files = _image_files(path)
        if not files:
            raise DataError(f"{path} has no images ({_SUFFIX_TEXT})", "check the path")
        names = [p.relative_to(path).as_posix() for p in files]
    elif path.is_file() and _is_image_file(path):
        files, names = [path], [path.name]
    else:
        raise DataError(
            f"{path}: not found, or not an image folder, image file or .npz file", "check the path"
        )
    rows = np.empty((len(files), spec.n_pixels), dtype=np.float32)
    _decode_into(rows, files, names, spec, on_progress)
    return _table(rows, spec, names)


def decode_image(data: bytes | str, spec: ImageSpec) -> np.ndarray:
    """One flattened float32 pixel row from image file bytes, or from a base64 string
    (optionally a ``data:image/...;base64,`` URL); InputSchemaError when it is not an image."""
    _check_channels(spec)
    if isinstance(data, str):
        text = data.strip()
        if text.startswith("data:"):
            header, _, text = text.partition(",")
            if not header.lower().endswith(";base64"):
                raise InputSchemaError("not an image: a data URL must be base64", _SEND_HINT)
        text = "".join(text.split())
        urlsafe = "-" in text or "_" in text
        try:
            raw = base64.b64decode(
                text + "=" * (-len(text) % 4), altchars=b"-_" if urlsafe else None, validate=True
            )
        except (binascii.Error, ValueError):
            raise InputSchemaError("not an image: invalid base64 text", _SEND_HINT) from None
    else:
        raw = bytes(data)
    if not raw:
        raise InputSchemaError("not an image: no data", _SEND_HINT)
    try:
        with Image.open(io.BytesIO(raw)) as im:
            im.load()
            return _pixels(im, spec, "the image").reshape(-1)
    except ShipmlError:
        raise
    except Exception as err:
        raise InputSchemaError(f"not an image ({_first_line(err)})", _SEND_HINT) from None


def is_image_source(path: str | Path) -> bool:
    """True for a path ending in .npz, or a folder with a sub-folder that holds images."""
    path = Path(path)
    if path.suffix.lower() == ".npz":
        return True
    if not path.is_dir():
        return False
    return any(
        sub.is_dir()
        and not sub.name.startswith(".")
        and any(_is_image_file(p) for p in sub.rglob("*"))
        for sub in path.iterdir()
    )
