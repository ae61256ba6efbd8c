"""DermaMNIST read from a small generated .npz with MedMNIST's keys and label layout."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ltbench.cli import main
from ltbench.data.datasets import load_dataset
from ltbench.data.dermamnist import CLASS_NAMES, MD5
from ltbench.data.splits import leak_report, make_split
from ltbench.errors import LtbenchError

SIZES = {"train": 70, "val": 21, "test": 28}


def write_npz(path: Path, size: int = 28, seed: int = 0, **replace) -> dict:
    rng = np.random.default_rng(seed)
    arrays = {}
    for part, n in SIZES.items():
        labels = np.arange(n) % 7  # every class in every part
        arrays[f"{part}_images"] = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
        arrays[f"{part}_labels"] = labels.reshape(-1, 1).astype(np.uint8)  # MedMNIST: [N, 1]
    arrays.update(replace)
    np.savez_compressed(path, **{k: v for k, v in arrays.items() if v is not None})
    return arrays


def test_reads_medmnist_split_and_order(tmp_path: Path) -> None:
    arrays = write_npz(tmp_path / "dermamnist.npz")
    s = load_dataset("dermamnist", tmp_path)
    assert s.class_names == CLASS_NAMES and s.class_names[4] == "melanoma" and s.class_names[5] == "melanocytic nevi"
    sp = make_split(s, "official")
    for part, rows in sp.parts().items():
        assert np.array_equal(s.pixels[rows], arrays[f"{part}_images"])
        assert np.array_equal(s.labels[rows], arrays[f"{part}_labels"][:, 0])
    assert leak_report(s, sp)["test_images_without_lesion_id"] == SIZES["test"]  # unknown, not "no leak"


def test_other_sizes(tmp_path: Path) -> None:
    write_npz(tmp_path / "dermamnist_64.npz", size=64)
    assert load_dataset("dermamnist", tmp_path, size=64).pixels.shape[1:] == (64, 64, 3)
    with pytest.raises(LtbenchError, match="dermamnist.npz: not found; download dermamnist.npz from MedMNIST's "
                                           "Zenodo record https://zenodo.org/records/10519652"):
        load_dataset("dermamnist", tmp_path)
    with pytest.raises(LtbenchError, match="choose one of 28, 64, 128, 224"):
        load_dataset("dermamnist", tmp_path, size=32)


def test_bad_files(tmp_path: Path) -> None:
    write_npz(tmp_path / "dermamnist.npz", val_labels=None)
    with pytest.raises(LtbenchError, match="missing array.s. val_labels"):
        load_dataset("dermamnist", tmp_path)
    write_npz(tmp_path / "dermamnist.npz", test_labels=np.full((28, 1), 7))
    with pytest.raises(LtbenchError, match=r"test_labels\[0\] = 7"):
        load_dataset("dermamnist", tmp_path)
    write_npz(tmp_path / "dermamnist.npz", size=64)
    with pytest.raises(LtbenchError, match="expected uint8 N×28×28×3"):
        load_dataset("dermamnist", tmp_path)
    (tmp_path / "dermamnist.npz").write_bytes(b"not a zip")
    with pytest.raises(LtbenchError, match="not a readable MedMNIST .npz"):
        load_dataset("dermamnist", tmp_path)
    write_npz(tmp_path / "dermamnist.npz")
    with pytest.raises(LtbenchError, match=f"is not MedMNIST's {MD5[28]}"):
        load_dataset("dermamnist", tmp_path, verify=True)


@pytest.mark.slow
def test_train_cli_on_dermamnist(tmp_path: Path, capsys) -> None:
    write_npz(tmp_path / "dermamnist.npz")
    out = tmp_path / "out"
    code = main(["train", "--method", "ce", "--dataset", "dermamnist", "--data-root", str(tmp_path),
                 "--backbone", "small-cnn", "--image-size", "16", "--epochs", "1", "--batch-size", "16",
                 "--device", "cpu", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    result = json.loads((out / "runs" / "ce" / "seed0.json").read_text())
    assert result["split"]["kind"] == "official"
    assert result["dataset"]["class_counts"]["test"] == [4] * 7
