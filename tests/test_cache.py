"""The decode-once pixel cache, on real JPEGs copied into tmp_path (never the shared files)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ltbench.data import cache
from ltbench.data.base import ImageSet
from ltbench.data.cache import cache_paths, load_pixels
from ltbench.errors import LtbenchError

N = 10


@pytest.fixture
def images(tmp_path: Path, isic2018_test_images: Path) -> list[Path]:
    """N real 224 px ISIC JPEGs, copied so that tests can touch/replace/corrupt them."""
    src = sorted((isic2018_test_images / "images").glob("*.jpg"))[:N + 1]
    folder = tmp_path / "img"
    folder.mkdir()
    for p in src:
        shutil.copy(p, folder / p.name)
    return sorted(folder.glob("*.jpg"))


def _set(paths: list[Path]) -> ImageSet:
    return ImageSet(ids=[p.stem for p in paths], labels=np.zeros(len(paths)), class_names=["x"], paths=paths)


@pytest.fixture
def count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Record every image the cache decodes."""
    calls: list[Path] = []
    real = cache.decode_image

    def spy(path: Path, size: int) -> np.ndarray:
        calls.append(path)
        return real(path, size)

    monkeypatch.setattr(cache, "decode_image", spy)
    return calls


def test_build_matches_pil(tmp_path: Path, images: list[Path]) -> None:
    s = _set(images[:N])
    full = load_pixels(s, 224, tmp_path / "cache")
    assert full.shape == (N, 224, 224, 3) and full.dtype == np.uint8
    for k in (0, N - 1):  # the sources are 224 px: no resize, so the decode must be exact
        np.testing.assert_array_equal(full[k], np.asarray(Image.open(images[k]).convert("RGB")))
    small = load_pixels(s, 64, tmp_path / "cache", workers=3)
    assert small.shape == (N, 64, 64, 3)
    for k in range(N):
        ref = np.asarray(Image.open(images[k]).convert("RGB").resize((64, 64), Image.Resampling.BILINEAR))
        # JPEG draft mode decodes at 1/2 scale first: close to, not bit-equal with, a full decode.
        assert np.abs(small[k].astype(int) - ref).mean() < 3.0
        assert np.abs(small[k].astype(int) - ref).mean() < np.abs(small[(k + 1) % N].astype(int) - ref).mean()


def test_second_call_reuses_cache(tmp_path: Path, images: list[Path], count_decodes: list[Path]) -> None:
    s = _set(images[:N])
    first = np.array(load_pixels(s, 32, tmp_path))
    assert len(count_decodes) == N
    npy, manifest = cache_paths([p.absolute() for p in s.paths], 32, tmp_path)
    mtime = npy.stat().st_mtime_ns
    again = load_pixels(s, 32, tmp_path)
    assert len(count_decodes) == N  # nothing decoded again
    assert isinstance(again, np.memmap) and again.mode == "r"
    assert npy.stat().st_mtime_ns == mtime
    np.testing.assert_array_equal(again, first)
    info = json.loads(manifest.read_text())
    assert info["count"] == N and info["size"] == 32 and len(info["files"]) == N
    assert info["files"][0][:2] == [str(images[0].absolute()), images[0].stat().st_size]


def test_touched_or_replaced_source_rebuilds(tmp_path: Path, images: list[Path], count_decodes: list[Path]) -> None:
    s = _set(images[:N])
    load_pixels(s, 32, tmp_path)
    st = images[3].stat()
    os.utime(images[3], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    load_pixels(s, 32, tmp_path)
    assert len(count_decodes) == 2 * N
    shutil.copy(images[N], images[3])  # different content and size, same path
    out = load_pixels(s, 32, tmp_path)
    assert len(count_decodes) == 3 * N
    np.testing.assert_array_equal(out[3], cache.decode_image(images[N], 32))


def test_interrupted_build_is_not_reused(tmp_path: Path, images: list[Path], count_decodes: list[Path]) -> None:
    s = _set(images[:N])
    load_pixels(s, 32, tmp_path)
    _, manifest = cache_paths([p.absolute() for p in s.paths], 32, tmp_path)
    manifest.unlink()  # as if the build died before writing its manifest
    load_pixels(s, 32, tmp_path)
    assert len(count_decodes) == 2 * N and manifest.is_file()


def test_cache_name_depends_on_order_and_size(tmp_path: Path, images: list[Path]) -> None:
    paths = [p.absolute() for p in images[:N]]
    assert cache_paths(paths, 32, tmp_path) != cache_paths(paths[::-1], 32, tmp_path)
    assert cache_paths(paths, 32, tmp_path) != cache_paths(paths, 64, tmp_path)
    rev = load_pixels(_set(images[:N][::-1]), 32, tmp_path)
    fwd = load_pixels(_set(images[:N]), 32, tmp_path)
    np.testing.assert_array_equal(rev, fwd[::-1])


def test_corrupt_jpeg_names_the_file(tmp_path: Path, images: list[Path]) -> None:
    images[2].write_bytes(b"this is not a jpeg" * 10)
    with pytest.raises(LtbenchError, match=f"cannot decode image {images[2]}: ") as e:
        load_pixels(_set(images[:N]), 32, tmp_path / "cache")
    assert "\n" not in str(e.value)
    # A failed build leaves neither a manifest nor a temporary array behind.
    assert [p for p in (tmp_path / "cache").iterdir()] == []


def test_truncated_jpeg(tmp_path: Path, images: list[Path]) -> None:
    data = images[1].read_bytes()
    images[1].write_bytes(data[: len(data) // 2])
    with pytest.raises(LtbenchError, match=f"cannot decode image {images[1]}"):
        load_pixels(_set(images[:N]), 32, tmp_path / "cache")


def test_missing_file(tmp_path: Path, images: list[Path]) -> None:
    images[4].unlink()
    with pytest.raises(LtbenchError, match=f"image listed but absent: {images[4]}"):
        load_pixels(_set(images[:N]), 32, tmp_path / "cache")


def test_in_memory_pixels_are_resized_not_cached(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    px = rng.integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    s = ImageSet(ids=list("abcde"), labels=np.zeros(5), class_names=["x"], pixels=px)
    assert load_pixels(s, 8, tmp_path / "c") is px
    big = load_pixels(s, 16, tmp_path / "c")
    assert big.shape == (5, 16, 16, 3) and big.dtype == np.uint8
    np.testing.assert_array_equal(big[2], np.asarray(Image.fromarray(px[2]).resize((16, 16), Image.Resampling.BILINEAR)))
    assert not (tmp_path / "c").exists()
    with pytest.raises(LtbenchError, match="positive integer"):
        load_pixels(s, 0, tmp_path)
