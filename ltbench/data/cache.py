"""Decode each image once into a uint8 memory-mapped ``.npy`` cache, validated by a manifest.

Decoding 600x450..1024x1024 JPEGs every epoch is the bottleneck of per-item PIL pipelines such as
ECL's (docs/spec perf.md), so ltbench decodes and resizes each image once. The manifest beside the
array records every source file's path, byte size and mtime: a stale cache is rebuilt, never reused.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from ltbench.data.base import ImageSet
from ltbench.errors import LtbenchError
from ltbench.fileio import atomic_write

FORMAT_VERSION = 1


def load_pixels(image_set: ImageSet, size: int, cache_dir: Path, workers: int = 2) -> np.ndarray:
    """All images of ``image_set`` as uint8 N×size×size×3 (a read-only memmap for file-based sets).

    Images are squashed to size×size (bilinear, antialiased; aspect ratio NOT preserved, the
    usual ISIC convention, e.g. ECL's ``Resize((224, 224))``). In-memory ``pixels`` are resized
    if needed and not cached; file-based sets are cached in ``cache_dir`` and reused while the
    manifest matches the source files.
    """
    if not isinstance(size, (int, np.integer)) or size < 1:
        raise LtbenchError(f"image size must be a positive integer, got {size!r}")
    if image_set.pixels is not None:
        return _resize_array(image_set.pixels, int(size))
    paths = [Path(p).absolute() for p in image_set.paths]
    npy, manifest_path = cache_paths(paths, int(size), Path(cache_dir))
    manifest = _manifest(paths, int(size))  # stat before decoding: a file changed meanwhile is caught next time
    if _cache_valid(npy, manifest_path, manifest):
        return np.lib.format.open_memmap(npy, mode="r")
    _build(paths, int(size), npy, manifest_path, manifest, workers)
    return np.lib.format.open_memmap(npy, mode="r")


def cache_paths(paths: list[Path], size: int, cache_dir: Path) -> tuple[Path, Path]:
    """The ``.npy`` and manifest paths, named from a hash of the ordered path list and the size."""
    h = hashlib.sha256(f"v{FORMAT_VERSION}|{size}|".encode())
    for p in paths:
        h.update(str(p).encode("utf-8", "surrogateescape") + b"\0")
    stem = f"pixels_{size}px_{len(paths)}_{h.hexdigest()[:16]}"
    return cache_dir / f"{stem}.npy", cache_dir / f"{stem}.json"


def decode_image(path: Path, size: int) -> np.ndarray:
    """One image file as uint8 size×size×3 RGB (PIL decode, bilinear antialiased resize)."""
    try:
        with Image.open(path) as img:
            # JPEG only (a no-op otherwise): decode at a 1/2, 1/4 or 1/8 scale that stays
            # >= size on both sides, a large speed-up for 1024 px sources.
            img.draft("RGB", (size, size))
            rgb = img.convert("RGB")
            if rgb.size != (size, size):
                rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(rgb, dtype=np.uint8)
    except FileNotFoundError:
        raise LtbenchError(f"image listed but absent: {path}") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        # PIL raises OSError subclasses (UnidentifiedImageError, "image file is truncated") and
        # occasionally ValueError/SyntaxError on corrupt headers.
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise LtbenchError(f"cannot decode image {path}: {reason}") from None


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


def _cache_valid(npy: Path, manifest_path: Path, manifest: dict) -> bool:
    """True only if the manifest exists, equals the current one and the array has the right shape."""
    try:
        saved = json.loads(manifest_path.read_text())
        arr = np.lib.format.open_memmap(npy, mode="r")
    except (OSError, ValueError):
        return False  # no manifest = an interrupted or never-finished build
    size = manifest["size"]
    return saved == manifest and arr.dtype == np.uint8 and arr.shape == (manifest["count"], size, size, 3)


# ---------------------------------------------------------------------------------------- build


def _build(paths: list[Path], size: int, npy: Path, manifest_path: Path, manifest: dict, workers: int) -> None:
    """Decode all images into a temporary .npy, rename it into place, then write the manifest."""
    npy.parent.mkdir(parents=True, exist_ok=True)
    manifest_path.unlink(missing_ok=True)  # from here on the old cache counts as invalid
    fd, tmp = tempfile.mkstemp(dir=npy.parent, prefix=f".{npy.name}.", suffix=".tmp")
    os.close(fd)
    try:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(paths), size, size, 3))
        _decode_all(paths, size, arr, workers)
        arr.flush()
        del arr
        # Rename (not overwrite in place): a reader still mapping the old file keeps valid data.
        os.replace(tmp, npy)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    atomic_write(manifest_path, json.dumps(manifest))


def _decode_all(paths: list[Path], size: int, out: np.ndarray, workers: int) -> None:
    """Fill ``out[i]`` with image i, in threads (PIL releases the GIL while decoding)."""

    def work(i: int) -> None:
        out[i] = decode_image(paths[i], size)

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
