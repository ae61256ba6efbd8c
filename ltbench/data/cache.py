"""Decode each image once into a uint8 memory-mapped ``.npy`` cache, validated by a manifest.

Decoding 600x450..1024x1024 JPEGs every epoch is the bottleneck of per-item PIL pipelines such as
ECL's (docs/spec perf.md), so ltbench decodes and resizes each image once. The manifest beside the
array records every source file's path, byte size and mtime (the default staleness check, as make
and rsync do): a stale cache is rebuilt, never reused. It also keeps what the squashed square
loses — each image's original (height, width), which the random resized crop is drawn on — and a
SHA-256 of every source, so ``verify=True`` (``ltbench data prepare --verify``) catches a
same-size, same-mtime replacement (``cp -p``, ``rsync -t``, tar) and rebuilds the whole cache.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from ltbench.data.base import ImageSet
from ltbench.errors import LtbenchError
from ltbench.store.files import atomic_write, hook, make_temp, remove_stale_temps

# v2: the manifest keeps original sizes, source hashes and EXIF orientations (v1 caches rebuild once).
FORMAT_VERSION = 2
_EXIF_ORIENTATION = 0x0112
# 16-bit modes PIL decodes PNG/TIFF/PGM sources to; convert("RGB") would clip them at 255.
_MODES_16BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
# Modes convert("RGB") maps faithfully to 8-bit RGB (alpha is dropped, as ECL's convert drops it).
_MODES_8BIT = ("1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV")


@dataclass
class CachedImages:
    """The pixel cache of an image set and what it knows about the sources."""

    pixels: np.ndarray  # uint8 N×size×size×3 (read-only memmap for file-based sets)
    sizes: np.ndarray  # int64 [N, 2]: each image's original (height, width)
    exif_oriented: int = 0  # images whose EXIF orientation (ignored, as ECL) would rotate or mirror them
    built: bool = False  # decoded by this call (False: a valid cache was reused)


@dataclass
class Decoded:
    pixels: np.ndarray  # uint8 size×size×3
    height: int  # of the source, before any draft scaling
    width: int
    orientation: int  # EXIF orientation tag (1 = as stored)
    sha256: str  # of the file's bytes


def load_images(image_set: ImageSet, size: int, cache_dir: Path, workers: int = 2, verify: bool = False,
                echo: Callable[[str], None] | None = None) -> CachedImages:
    """All images of ``image_set`` squashed to size×size, their original sizes, cached.

    Images are squashed to size×size (bilinear, antialiased; aspect ratio NOT preserved, the
    usual ISIC convention, e.g. ECL's ``Resize((224, 224))``). In-memory ``pixels`` are resized
    if needed and not cached; their original size is the array's. File-based sets are cached in
    ``cache_dir`` and reused while the manifest matches the sources' size and mtime; with
    ``verify`` the sources are also hashed and any change rebuilds the whole cache. ``echo``
    (default: stderr) gets one note when a build finds images with a rotating EXIF orientation.
    """
    if not isinstance(size, (int, np.integer)) or size < 1:
        raise LtbenchError(f"image size must be a positive integer, got {size!r}")
    size = int(size)
    if image_set.pixels is not None:
        pixels = _resize_array(image_set.pixels, size)  # validates the array
        sizes = np.tile(np.asarray(image_set.pixels.shape[1:3], dtype=np.int64), (len(pixels), 1))
        return CachedImages(pixels, sizes)
    paths = [Path(p).absolute() for p in image_set.paths]
    npy, manifest_path = cache_paths(paths, size, Path(cache_dir))
    remove_stale_temps(Path(cache_dir), "pixels_*")  # a killed build's .npy temp file, once its writer is gone
    manifest = _manifest(paths, size)  # stat before decoding: a file changed meanwhile is caught next time
    saved = _valid_manifest(npy, manifest_path, manifest, echo)
    if saved is not None:
        if not verify or _hashes_match(paths, saved, workers):
            return _cached(npy, saved, built=False)
        (echo or _stderr)(f"ltbench: note: a source image changed since the {size} px cache was built "
                          f"(same size and mtime, different content): rebuilding it")
    saved = _build(paths, size, npy, manifest_path, manifest, workers)
    if saved["exif_oriented"]:
        k = len(saved["exif_oriented"])
        first = Path(saved["files"][saved["exif_oriented"][0]][0]).name
        (echo or _stderr)(f"ltbench: note: {k} of {len(paths)} images (e.g. {first}) carry an EXIF orientation "
                          f"that rotates or mirrors them; it is ignored, as ECL's PIL loader ignores it")
    return _cached(npy, saved, built=True)


def load_pixels(image_set: ImageSet, size: int, cache_dir: Path, workers: int = 2) -> np.ndarray:
    """The uint8 N×size×size×3 pixels of :func:`load_images` alone."""
    return load_images(image_set, size, cache_dir, workers).pixels


def cache_paths(paths: list[Path], size: int, cache_dir: Path) -> tuple[Path, Path]:
    """The ``.npy`` and manifest paths, named from a hash of the ordered path list and the size."""
    h = hashlib.sha256(f"v{FORMAT_VERSION}|{size}|".encode())
    for p in paths:
        h.update(str(p).encode("utf-8", "surrogateescape") + b"\0")
    stem = f"pixels_{size}px_{len(paths)}_{h.hexdigest()[:16]}"
    return cache_dir / f"{stem}.npy", cache_dir / f"{stem}.json"


def decode_image(path: Path, size: int) -> np.ndarray:
    """One image file as uint8 size×size×3 RGB (PIL decode, bilinear antialiased resize)."""
    return read_image(path, size).pixels


def read_image(path: Path, size: int) -> Decoded:
    """Decode one file: size×size RGB pixels, original size, EXIF orientation, SHA-256 of the bytes.

    16-bit sources (PNG/TIFF/PGM: PIL modes ``I;16*``, or ``I`` holding values in 0..65535) are
    scaled to 8 bits (v·255/65535, rounded) instead of clipped by ``convert("RGB")``; a mode with
    no faithful 8-bit RGB form (float ``F``, ``I`` beyond 16 bits) is refused naming the file.
    The EXIF orientation is read but not applied: ECL's ``Image.open(...).convert("RGB")`` does
    not apply it, and applying it would change ISIC pixels.
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise LtbenchError(f"image listed but absent: {path}") from None
    except OSError as e:
        raise LtbenchError(f"cannot read image {path}: {e.strerror or e}") from None
    digest = hashlib.sha256(data).hexdigest()
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size  # before draft() shrinks it
            orientation = int(img.getexif().get(_EXIF_ORIENTATION, 1) or 1)
            if img.mode in _MODES_16BIT:
                rgb = _from_16bit(img, path)
            elif img.mode in _MODES_8BIT:
                # JPEG only (a no-op otherwise): decode at a 1/2, 1/4 or 1/8 scale that stays
                # >= size on both sides, a large speed-up for 1024 px sources.
                img.draft("RGB", (size, size))
                rgb = img.convert("RGB")
            else:
                raise LtbenchError(f"cannot decode image {path}: pixel mode {img.mode!r} has no faithful "
                                   f"8-bit RGB conversion; save it as 8- or 16-bit RGB or grayscale")
            if rgb.size != (size, size):
                rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
            return Decoded(np.asarray(rgb, dtype=np.uint8), height, width, orientation, digest)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        # PIL raises OSError subclasses (UnidentifiedImageError, "image file is truncated") and
        # occasionally ValueError/SyntaxError on corrupt headers.
        if not data:
            reason = "an empty file (0 bytes)"
        elif isinstance(e, UnidentifiedImageError):  # its text names our BytesIO object, not the file
            reason = f"not an image format PIL can read ({len(data)} bytes starting {data[:8]!r})"
        else:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise LtbenchError(f"cannot decode image {path}: {reason}") from None


def _from_16bit(img: Image.Image, path: Path) -> Image.Image:
    """A 16-bit grayscale image as 8-bit RGB, scaled (not clipped)."""
    values = np.asarray(img).astype(np.int64)
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise LtbenchError(f"cannot decode image {path}: {img.mode!r} pixels outside 0..65535 "
                           f"(more than 16 bits) have no faithful 8-bit conversion")
    gray = ((values * 255 + 32767) // 65535).astype(np.uint8)  # round(v·255/65535), exact in integers
    return Image.fromarray(gray, mode="L").convert("RGB")


# ------------------------------------------------------------------------------------- manifest


def _manifest(paths: list[Path], size: int) -> dict:
    files = []
    for p in paths:
        try:
            st = p.stat()
        except FileNotFoundError:
            raise LtbenchError(f"image listed but absent: {p}") from None
        files.append([str(p), st.st_size, st.st_mtime_ns])
    return {"format_version": FORMAT_VERSION, "size": size, "count": len(paths), "files": files}


_CHECKED = ("format_version", "size", "count", "files")


def _manifest_problem(saved: object, count: int) -> str | None:
    """What makes a saved manifest unusable (it was damaged or written by something else), or None."""
    if not isinstance(saved, dict):
        return f"a JSON {type(saved).__name__}, not an object"
    sizes = saved.get("original_sizes")
    if not isinstance(sizes, list) or len(sizes) != count or not all(
            isinstance(hw, list) and len(hw) == 2 and all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                                                         for v in hw) for hw in sizes):
        return f"'original_sizes' is not a list of {count} (height, width) pairs"
    for key in ("sha256", "exif_oriented"):
        if key in saved and not isinstance(saved[key], list):
            return f"{key!r} is not a list"
    if not all(isinstance(i, int) and 0 <= i < count for i in saved.get("exif_oriented", [])):
        return "'exif_oriented' is not a list of image indices"
    return None


def _valid_manifest(npy: Path, manifest_path: Path, manifest: dict,
                    echo: Callable[[str], None] | None = None) -> dict | None:
    """The saved manifest if it matches the sources (size, mtime) and the array has the right shape.

    A manifest damaged outside ltbench (a list, string ``original_sizes``) is one note and a rebuild:
    the cache is derived data, never a traceback (issue 21).
    """
    try:
        saved = json.loads(manifest_path.read_text())
        arr = np.lib.format.open_memmap(npy, mode="r")
    except (OSError, ValueError, RecursionError):
        return None  # no manifest = an interrupted or never-finished build
    if isinstance(saved, dict) and any(saved.get(k) != manifest[k] for k in _CHECKED):
        return None  # the sources changed: rebuilt, as make would
    problem = _manifest_problem(saved, manifest["count"])
    if problem is not None:
        (echo or _stderr)(f"ltbench: note: pixel cache manifest {manifest_path} is damaged ({problem}): "
                          "rebuilding the cache")
        return None
    size = manifest["size"]
    if arr.dtype != np.uint8 or arr.shape != (manifest["count"], size, size, 3):
        return None
    return saved


def _hashes_match(paths: list[Path], saved: dict, workers: int) -> bool:
    """True if every source still has the SHA-256 recorded when the cache was built."""
    recorded = saved.get("sha256")
    if not recorded or len(recorded) != len(paths):
        return False

    def digest(p: Path) -> str:
        try:
            h = hashlib.sha256()
            with open(p, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
            return h.hexdigest()
        except FileNotFoundError:
            raise LtbenchError(f"image listed but absent: {p}") from None

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:  # hashlib releases the GIL
        return all(a == b for a, b in zip(pool.map(digest, paths), recorded))


def _cached(npy: Path, saved: dict, built: bool) -> CachedImages:
    return CachedImages(np.lib.format.open_memmap(npy, mode="r"),
                        np.asarray(saved["original_sizes"], dtype=np.int64).reshape(-1, 2),
                        len(saved.get("exif_oriented", ())), built)


# ---------------------------------------------------------------------------------------- build


def _build(paths: list[Path], size: int, npy: Path, manifest_path: Path, manifest: dict, workers: int) -> dict:
    """Decode all images into a temporary .npy, rename it into place, then write the manifest."""
    npy.parent.mkdir(parents=True, exist_ok=True)
    manifest_path.unlink(missing_ok=True)  # from here on the old cache counts as invalid
    fd, tmp = make_temp(npy)  # the user's umask, not mkstemp's 0600; names its writer
    os.close(fd)
    try:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(paths), size, size, 3))
        hook("cache")  # test-only kill point (LTBENCH_TEST_KILL_AT=cache:1): a build killed mid-way
        info = _decode_all(paths, size, arr, workers)
        arr.flush()
        del arr
        # Rename (not overwrite in place): a reader still mapping the old file keeps valid data.
        os.replace(tmp, npy)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    saved = {**manifest, "original_sizes": [[d[0], d[1]] for d in info], "sha256": [d[3] for d in info],
             "exif_oriented": [i for i, d in enumerate(info) if 2 <= d[2] <= 8]}  # 1 = as stored
    atomic_write(manifest_path, json.dumps(saved))
    return saved


def _decode_all(paths: list[Path], size: int, out: np.ndarray, workers: int) -> list[tuple[int, int, int, str]]:
    """Fill ``out[i]`` with image i, in threads (PIL releases the GIL while decoding).

    Returns (height, width, EXIF orientation, SHA-256) per image.
    """
    info: list = [None] * len(paths)

    def work(i: int) -> None:
        d = read_image(paths[i], size)
        out[i] = d.pixels
        info[i] = (d.height, d.width, d.orientation, d.sha256)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = [pool.submit(work, i) for i in range(len(paths))]
        try:
            bar = tqdm(total=len(paths), desc=f"decoding images to {size}px", unit="img", leave=False,
                       disable=None)  # None: no bar when stderr is not a terminal (logs, CI)
            with bar:
                for fut in as_completed(futures):
                    fut.result()  # re-raises the first LtbenchError here
                    bar.update()
        except BaseException:
            for f in futures:
                f.cancel()
            raise
    return info


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _resize_array(pixels: np.ndarray, size: int) -> np.ndarray:
    """In-memory images (N×H×W×3 uint8) squashed to size×size with the same PIL resize."""
    if pixels.ndim != 4 or pixels.shape[3] != 3 or pixels.dtype != np.uint8:
        raise LtbenchError(
            f"in-memory images must be uint8 N×H×W×3, got {pixels.dtype} {tuple(pixels.shape)}"
        )
    if pixels.shape[1:3] == (size, size):
        return pixels
    out = np.empty((len(pixels), size, size, 3), dtype=np.uint8)
    for i, img in enumerate(pixels):
        out[i] = np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.BILINEAR))
    return out
