"""``prepare_data`` hands the originals' sizes to the trainer; ``ltbench data prepare --verify``."""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ltbench.cli import main
from ltbench.runs import DataSpec, prepare_data

COLUMNS_2019 = ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK"]


def _isic2019_layout(root: Path, per_class: int = 5) -> list[Path]:
    """An official ISIC 2019 training layout of small real JPEGs of two geometries."""
    rng = np.random.default_rng(0)
    folder = root / "ISIC_2019_Training_Input"
    folder.mkdir(parents=True)
    rows, paths = [], []
    for c, name in enumerate(COLUMNS_2019[:-1]):
        for k in range(per_class):
            image_id = f"ISIC_{c:03d}{k:04d}"
            shape = (36, 48, 3) if k % 2 else (40, 40, 3)
            Image.fromarray(np.clip(rng.normal(30 + 25 * c, 20, shape), 0, 255).astype(np.uint8)).save(
                folder / f"{image_id}.jpg", quality=90)
            rows.append({"image": image_id, **{col: float(col == name) for col in COLUMNS_2019}})
            paths.append(folder / f"{image_id}.jpg")
    pd.DataFrame(rows).to_csv(root / "ISIC_2019_Training_GroundTruth.csv", index=False)
    return paths


def test_prepare_data_passes_original_sizes(tmp_path: Path) -> None:
    _isic2019_layout(tmp_path / "isic")
    spec = DataSpec(dataset="isic2019", data_root=str(tmp_path / "isic"), cache_dir=str(tmp_path / "cache"))
    bundle = prepare_data(spec, 32).bundle
    assert bundle.pixels.shape[1:] == (37, 37, 3)
    sizes = {tuple(s) for s in bundle.original_sizes.tolist()}
    assert sizes == {(36, 48), (40, 40)} and len(bundle.original_sizes) == len(bundle.labels)
    digits = prepare_data(DataSpec(dataset="digits-lt"), 16).bundle
    assert digits.original_sizes.tolist() == [[8, 8]] * len(digits.labels)  # in memory: their own size


def _replace_same_size_same_mtime(path: Path) -> None:
    st = path.stat()
    with Image.open(path) as img:
        flipped = img.convert("RGB").transpose(Image.Transpose.ROTATE_180)
    for quality in range(95, 5, -5):
        buf = io.BytesIO()
        flipped.save(buf, format="JPEG", quality=quality)
        if buf.tell() <= st.st_size:
            path.write_bytes(buf.getvalue() + bytes(st.st_size - buf.tell()))  # zeros after EOI
            break
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns


def test_data_prepare_verify_rebuilds_after_a_same_size_same_mtime_replacement(tmp_path: Path, capsys) -> None:
    paths = _isic2019_layout(tmp_path / "isic")
    args = ["data", "prepare", "--dataset", "isic2019", "--data-root", str(tmp_path / "isic"),
            "--image-size", "32", "--cache-dir", str(tmp_path / "cache")]
    assert main(args) == 0
    npy = next((tmp_path / "cache").glob("*.npy"))
    before = np.load(npy).copy()
    inode = npy.stat().st_ino
    _replace_same_size_same_mtime(paths[3])
    capsys.readouterr()
    assert main(args) == 0  # default check: size + mtime match, the cache is reused (stale)
    assert npy.stat().st_ino == inode and "rebuilding" not in capsys.readouterr().err
    assert main(args + ["--verify"]) == 0
    err = capsys.readouterr().err
    assert "changed since the 37 px cache was built" in err and "rebuilding" in err
    assert npy.stat().st_ino != inode
    after = np.load(npy)
    changed = [i for i in range(len(after)) if not np.array_equal(after[i], before[i])]
    assert len(changed) == 1  # the replaced image (rows are in the dataset's order)
    inode = npy.stat().st_ino
    assert main(args + ["--verify"]) == 0  # unchanged now: hashed, reused
    assert npy.stat().st_ino == inode and "rebuilding" not in capsys.readouterr().err
