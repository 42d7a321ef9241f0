"""Image data sets as tables, on scikit-learn's bundled digits written as PNG files."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from shipml.data.images import (
    ImageSpec,
    decode_image,
    frame_from_images,
    is_image_source,
    read_image_folder,
    read_images_for_prediction,
    read_npz,
)
from shipml.errors import DataError, InputSchemaError, ShipmlError

PER_CLASS = 3
CLASSES = (0, 1, 2)


def _digits() -> tuple[np.ndarray, np.ndarray]:
    """A few 8×8 digits per class as uint8 0-255 images, and their labels."""
    data = load_digits()
    picks = np.concatenate([np.flatnonzero(data.target == c)[:PER_CLASS] for c in CLASSES])
    images = np.round(data.images[picks] * 255 / 16).astype(np.uint8)
    return images, data.target[picks]


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def digits_dir(tmp_path: Path) -> Path:
    root = tmp_path / "digits"
    images, labels = _digits()
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"img{i:02d}.png").write_bytes(_png(image))
    return root


def _assert_user_error(err: ShipmlError, *needles: str) -> None:
    assert "\n" not in err.message
    for needle in needles:
        assert needle in err.message


def test_spec_columns_and_dict() -> None:
    spec = ImageSpec(2, 3, 2, resize=False)
    assert spec.n_pixels == 12 and len(spec.columns) == 12
    assert spec.columns[:3] == ["pixel_0_0_0", "pixel_0_0_1", "pixel_0_1_0"]
    assert spec.columns[-1] == "pixel_1_2_1"
    assert ImageSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(DataError):
        ImageSpec(0, 3, 1)


def test_folder_round_trip(digits_dir: Path) -> None:
    images, labels = _digits()
    calls: list[tuple[int, int]] = []
    df, spec = read_image_folder(digits_dir, target="digit", on_progress=lambda *a: calls.append(a))
    assert spec == ImageSpec(8, 8, 1)
    assert list(df.columns) == ["file", *spec.columns, "digit"]
    assert df["file"].iloc[0] == "0/img00.png"
    assert df["digit"].tolist() == [str(label) for label in labels]
    pixels = df[spec.columns].to_numpy()
    assert pixels.dtype == np.float32
    np.testing.assert_array_equal(pixels, images.reshape(len(images), -1))
    assert calls[-1] == (len(images), len(images))


def test_npz_round_trip(tmp_path: Path) -> None:
    images, labels = _digits()
    path = tmp_path / "digits.npz"
    np.savez(path, X=images, digit=labels)
    df, spec = read_npz(path, "digit")
    assert spec == ImageSpec(8, 8, 1)
    np.testing.assert_array_equal(df[spec.columns].to_numpy(), images.reshape(len(images), -1))
    assert df["digit"].tolist() == labels.tolist()

    color = np.stack([images, images // 2, images // 4], axis=-1)  # (n, 8, 8, 3)
    np.savez(path, X=color, y=np.array([f"d{v}" for v in labels]))
    df, spec = read_npz(path, "y")
    assert spec.channels == 3 and df["y"].iloc[0] == "d0"
    np.testing.assert_array_equal(df[spec.columns].to_numpy()[0].reshape(8, 8, 3), color[0])


def test_npz_errors(tmp_path: Path) -> None:
    images, labels = _digits()
    path = tmp_path / "d.npz"
    np.savez(path, X=images, digit=labels)
    with pytest.raises(DataError) as err:
        read_npz(path, "label")
    _assert_user_error(err.value, "'label'", "X, digit")
    np.savez(path, X=images, label=labels[:-1])
    with pytest.raises(DataError, match="9 images but 'label' has shape"):
        read_npz(path, "label")
    np.savez(path, X=images.reshape(len(images), -1), label=labels)
    with pytest.raises(DataError, match="expected \\(n, height, width\\)"):
        read_npz(path, "label")
    path.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a NumPy"):
        read_npz(path, "label")


def test_decode_matches_folder_row(digits_dir: Path) -> None:
    df, spec = read_image_folder(digits_dir)
    raw = (digits_dir / df["file"].iloc[4]).read_bytes()
    row = df[spec.columns].to_numpy()[4]
    text = base64.b64encode(raw).decode()
    for data in (raw, text, f"data:image/png;base64,{text}"):
        np.testing.assert_array_equal(decode_image(data, spec), row)
    for bad in ("%%%", base64.b64encode(b"hello").decode(), b""):
        with pytest.raises(InputSchemaError, match="not an image"):
            decode_image(bad, spec)
    as_list = frame_from_images([row.reshape(8, 8).tolist()], spec)  # /predict's pixel lists
    np.testing.assert_array_equal(as_list.to_numpy()[0], row)
    with pytest.raises(InputSchemaError, match="or 64 values"):
        frame_from_images([[1, 2, 3]], spec)
    with pytest.raises(InputSchemaError, match="not numbers"):
        frame_from_images([["a"] * 64], spec)


def test_mixed_sizes_resized_or_refused(digits_dir: Path) -> None:
    odd = digits_dir / "1" / "big.png"
    Image.open(digits_dir / "1" / "img03.png").resize((16, 12)).save(odd)
    df, spec = read_image_folder(digits_dir)
    assert (spec.height, spec.width) == (8, 8) and spec.resize
    assert len(df) == PER_CLASS * len(CLASSES) + 1
    with pytest.raises(DataError) as err:
        read_image_folder(digits_dir, on_mismatch="error")
    _assert_user_error(err.value, "1/big.png", "12x16", "expected 8x8")
    df, spec = read_image_folder(digits_dir, size=(4, 4))
    assert spec.n_pixels == 16 and len(df) == PER_CLASS * len(CLASSES) + 1
    with pytest.raises(InputSchemaError, match="expected 8x8"):
        decode_image(odd.read_bytes(), ImageSpec(8, 8, 1, resize=False))


def test_color_and_gray_mixed(digits_dir: Path) -> None:
    gray_file = digits_dir / "2" / "img06.png"
    gray = np.asarray(Image.open(gray_file), dtype=np.float32)
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., 0] = 200  # red where opaque; the transparent half turns white
    rgba[:4, :, 3] = 255
    Image.fromarray(rgba).save(digits_dir / "2" / "red.png")
    df, spec = read_image_folder(digits_dir)
    assert spec.channels == 3
    row = df.loc[df["file"] == "2/red.png", spec.columns].to_numpy().reshape(8, 8, 3)
    np.testing.assert_array_equal(row[0, 0], [200, 0, 0])
    np.testing.assert_array_equal(row[7, 7], [255, 255, 255])
    gray_row = df.loc[df["file"] == "2/img06.png", spec.columns].to_numpy().reshape(8, 8, 3)
    for channel in range(3):
        np.testing.assert_array_equal(gray_row[..., channel], gray)
    with pytest.raises(DataError) as err:
        read_image_folder(digits_dir, on_mismatch="error")
    _assert_user_error(err.value, "2/red.png", "color image among grayscale")
    _, spec = read_image_folder(digits_dir, channels=1, on_mismatch="error")
    assert spec.channels == 1


def test_sixteen_bit_gray_scaled_to_255(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    deep = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "a" / "deep.png")
    (tmp_path / "b").mkdir()
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(tmp_path / "b" / "zero.png")
    df, spec = read_image_folder(tmp_path)
    assert spec.channels == 1
    np.testing.assert_allclose(df[spec.columns].to_numpy()[0], deep.ravel() / 257, rtol=1e-6)


def test_corrupt_file(digits_dir: Path) -> None:
    (digits_dir / "0" / "bad.png").write_bytes(b"not an image at all")
    with pytest.raises(DataError) as err:
        read_image_folder(digits_dir)
    _assert_user_error(err.value, "0/bad.png", "cannot be read as an image")
    truncated = (digits_dir / "1" / "img03.png").read_bytes()[:60]
    (digits_dir / "0" / "bad.png").write_bytes(truncated)
    with pytest.raises(DataError, match=r"0/bad\.png: cannot be read as an image"):
        read_image_folder(digits_dir)


def test_folder_layout_errors(digits_dir: Path, tmp_path: Path) -> None:
    (digits_dir / "7").mkdir()
    (digits_dir / "7" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError) as err:
        read_image_folder(digits_dir)
    _assert_user_error(err.value, "'7'", "no images")
    (digits_dir / "7" / "notes.txt").unlink()
    (digits_dir / "7").rmdir()
    (digits_dir / "stray.png").write_bytes((digits_dir / "0" / "img00.png").read_bytes())
    with pytest.raises(DataError, match="outside the class folders"):
        read_image_folder(digits_dir)
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "a.png").write_bytes((digits_dir / "0" / "img00.png").read_bytes())
    with pytest.raises(DataError, match="no class sub-folders"):
        read_image_folder(flat)
    with pytest.raises(DataError, match="not found"):
        read_image_folder(tmp_path / "missing")


def test_prediction_inputs(digits_dir: Path, tmp_path: Path) -> None:
    train, spec = read_image_folder(digits_dir)
    flat = tmp_path / "new"
    flat.mkdir()
    for name in train["file"]:
        (flat / name.replace("/", "_")).write_bytes((digits_dir / name).read_bytes())
    df = read_images_for_prediction(flat, spec)
    assert list(df.columns) == ["file", *spec.columns]
    assert df["file"].iloc[0] == "0_img00.png"
    pd.testing.assert_frame_equal(df[spec.columns], train[spec.columns])
    assert len(read_images_for_prediction(digits_dir, spec)) == len(train)  # class folders too
    one = read_images_for_prediction(flat / "0_img00.png", spec)
    assert one["file"].tolist() == ["0_img00.png"]

    images, _ = _digits()
    np.savez(tmp_path / "new.npz", X=images)
    df = read_images_for_prediction(tmp_path / "new.npz", spec)
    assert df["file"].iloc[1] == "new.npz[1]"
    pd.testing.assert_frame_equal(df[spec.columns], frame_from_images(images, spec))
    np.savez(tmp_path / "big.npz", X=np.repeat(images, 2, axis=1))  # 16×8: arrays are not resized
    with pytest.raises(InputSchemaError, match=r"big\.npz: one image has shape"):
        read_images_for_prediction(tmp_path / "big.npz", spec)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        read_images_for_prediction(tmp_path / "empty", spec)


def test_is_image_source(digits_dir: Path, tmp_path: Path) -> None:
    assert is_image_source(digits_dir)
    assert is_image_source(tmp_path / "x.NPZ")
    assert not is_image_source(digits_dir / "0")  # a flat folder: no class sub-folders
    assert not is_image_source(tmp_path / "train.csv")
