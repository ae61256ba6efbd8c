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
    real = cache.read_image

    def spy(path: Path, size: int) -> cache.Decoded:
        calls.append(path)
        return real(path, size)

    monkeypatch.setattr(cache, "read_image", spy)
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


# ------------------------------------------------------------------ original sizes, image modes, EXIF


def test_original_sizes_are_kept_with_the_cache(tmp_path: Path) -> None:
    folder = tmp_path / "img"
    folder.mkdir()
    rng = np.random.default_rng(0)
    shapes = [(450, 600), (1024, 768), (37, 53)]
    paths = []
    for i, (h, w) in enumerate(shapes):
        p = folder / f"{i}.jpg"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(p, quality=90)
        paths.append(p)
    built = cache.load_images(_set(paths), 64, tmp_path / "cache")
    assert built.built and built.sizes.tolist() == [list(s) for s in shapes]  # before JPEG draft scaling
    again = cache.load_images(_set(paths), 64, tmp_path / "cache")
    assert not again.built and again.sizes.tolist() == built.sizes.tolist()
    px = rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    mem = cache.load_images(ImageSet(ids=list("abcd"), labels=np.zeros(4), class_names=["x"], pixels=px), 16, tmp_path)
    assert mem.pixels.shape == (4, 16, 16, 3) and mem.sizes.tolist() == [[8, 8]] * 4  # their own size


def test_16bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    # A real 16-bit grayscale PNG (PIL mode I;16): a ramp of mean ~90/255 over the full 16-bit range.
    ramp = np.linspace(0, 0.7, 64)[None, :].repeat(48, axis=0)
    values = np.round(ramp * 65535).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode == "I;16"
    assert np.asarray(Image.open(path).convert("RGB")).mean() > 200  # what convert("RGB") alone gives
    out = cache.decode_image(path, 64)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    ref = np.round(values.astype(np.float64) * 255 / 65535)
    expected = Image.fromarray(ref.astype(np.uint8)).resize((64, 64), Image.Resampling.BILINEAR)
    np.testing.assert_array_equal(out[..., 0], np.asarray(expected))
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    assert abs(out.mean() - 255 * ramp.mean()) < 1.0  # ~89, not 215
    # 16-bit PGM opens as mode I with the same values: scaled the same way.
    pgm = tmp_path / "deep.pgm"
    Image.fromarray(values).save(pgm)
    np.testing.assert_array_equal(cache.decode_image(pgm, 64), out)


def test_mode_without_faithful_rgb_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "float.tif"
    Image.fromarray(np.full((8, 8), 0.5, dtype=np.float32)).save(path)
    with pytest.raises(LtbenchError, match=f"cannot decode image {path}: pixel mode 'F'") as e:
        cache.load_pixels(_set([path]), 16, tmp_path / "cache")
    assert "\n" not in str(e.value)
    wide = tmp_path / "wide.tif"
    Image.fromarray(np.full((8, 8), 70000, dtype=np.int32)).save(wide)
    with pytest.raises(LtbenchError, match=f"cannot decode image {wide}: 'I' pixels outside 0..65535"):
        cache.decode_image(wide, 16)


def test_exif_orientation_is_ignored_and_counted_once(tmp_path: Path, images: list[Path]) -> None:
    paths = images[:4]
    with Image.open(paths[1]) as img:
        exif = img.getexif()
        exif[0x0112] = 6  # "rotate 90° CW to display"
        img.save(paths[1], exif=exif, quality=95)
    with Image.open(paths[2]) as img:
        exif = img.getexif()
        exif[0x0112] = 1  # as stored: not counted
        img.save(paths[2], exif=exif, quality=95)
    notes: list[str] = []
    out = cache.load_images(_set(paths), 224, tmp_path / "cache", echo=notes.append)
    assert out.exif_oriented == 1 and len(notes) == 1
    assert "1 of 4 images" in notes[0] and paths[1].name in notes[0] and "ignored" in notes[0]
    # Not applied: the pixels are those of the stored orientation (the plain decode).
    np.testing.assert_array_equal(out.pixels[1], np.asarray(Image.open(paths[1]).convert("RGB")))
    cache.load_images(_set(paths), 224, tmp_path / "cache", echo=notes.append)
    assert len(notes) == 1  # said when the cache is built, not on every reuse


# ------------------------------------------------------------------ content check (--verify)


def _same_size_jpeg(src: Path, dst: Path, size: int) -> None:
    """Write ``src``'s image to ``dst`` as a JPEG of exactly ``size`` bytes (zeros after EOI, which decoders skip)."""
    import io

    with Image.open(src) as img:
        rgb = img.convert("RGB")
    for quality in range(95, 5, -5):
        buf = io.BytesIO()
        rgb.save(buf, format="JPEG", quality=quality)
        if buf.tell() <= size:
            dst.write_bytes(buf.getvalue() + bytes(size - buf.tell()))
            return
    raise AssertionError("could not make a small enough JPEG")


def test_verify_detects_a_same_size_same_mtime_replacement(tmp_path: Path, images: list[Path],
                                                           count_decodes: list[Path]) -> None:
    s = _set(images[:N])
    first = np.array(load_pixels(s, 32, tmp_path))
    npy, manifest = cache_paths([p.absolute() for p in s.paths], 32, tmp_path)
    # Replace image 3 by a same-size file with other content, then restore its mtime (as cp -p,
    # rsync -t or tar do): the default size + mtime check cannot see it.
    st = images[3].stat()
    _same_size_jpeg(images[N], images[3], st.st_size)
    os.utime(images[3], ns=(st.st_atime_ns, st.st_mtime_ns))
    assert images[3].stat().st_size == st.st_size and images[3].stat().st_mtime_ns == st.st_mtime_ns
    stale = load_pixels(s, 32, tmp_path)
    assert len(count_decodes) == N  # served from the cache
    np.testing.assert_array_equal(stale, first)
    inode = npy.stat().st_ino
    notes: list[str] = []
    fresh = cache.load_images(s, 32, tmp_path, verify=True, echo=notes.append)
    assert fresh.built and len(count_decodes) == 2 * N  # the whole cache rebuilt ...
    assert npy.stat().st_ino != inode  # ... by write-then-rename
    assert len(notes) == 1 and "rebuilding" in notes[0]
    np.testing.assert_array_equal(fresh.pixels[3], cache.decode_image(images[3], 32))
    assert not np.array_equal(fresh.pixels[3], first[3])
    np.testing.assert_array_equal(np.delete(np.asarray(fresh.pixels), 3, 0), np.delete(first, 3, 0))
    # Unchanged sources: --verify hashes them and reuses the cache.
    decodes = len(count_decodes)
    again = cache.load_images(s, 32, tmp_path, verify=True)
    assert not again.built and len(count_decodes) == decodes
    assert json.loads(manifest.read_text())["sha256"][3] == cache.hashlib.sha256(images[3].read_bytes()).hexdigest()


def test_the_pixel_cache_gets_the_users_umask(tmp_path):
    import os

    from ltbench.data.cache import load_images

    folder = tmp_path / "imgs"
    folder.mkdir()
    paths = []
    for k in range(2):
        path = folder / f"img{k}.jpg"
        Image.fromarray(np.full((20, 30, 3), 40 * k, dtype=np.uint8)).save(path)
        paths.append(path)
    image_set = ImageSet(ids=[p.stem for p in paths], labels=np.array([0, 1]), class_names=["a", "b"], paths=paths)
    old = os.umask(0o002)
    try:
        load_images(image_set, 8, tmp_path / "cache")
    finally:
        os.umask(old)
    modes = {p.suffix: p.stat().st_mode & 0o777 for p in (tmp_path / "cache").iterdir()}
    assert modes == {".npy": 0o664, ".json": 0o664}
