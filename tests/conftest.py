"""Shared fixtures: where the real ISIC data lives (../shared/data or $LTBENCH_SHARED_DATA).

Suite rule (tests/README.md): exact float equality only between two computations on the same
machine; a value recorded elsewhere gets a tolerance, with its reason beside it."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    env = os.environ.get("LTBENCH_SHARED_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data folder; tests using it are skipped with a reason when it is absent."""
    root = shared_data_dir()
    if not (root / "isic").is_dir():
        pytest.skip(f"real ISIC data not found at {root} (set LTBENCH_SHARED_DATA)")
    return root


@pytest.fixture(scope="session")
def isic2018_test_images(shared_data: Path) -> Path:
    folder = shared_data / "isic2018_task3_test_224"
    if not (folder / "images").is_dir():
        pytest.skip(f"real ISIC 2018 test images not found at {folder}")
    return folder


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module of tiny-tensor tests: thread start-up dominates them, and on a
    busy 2-core machine costs ~20x. Opt in with ``pytestmark = pytest.mark.usefixtures(...)``;
    never autouse: the golden and contract tests must run with the default thread count."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def shared_isic2019(shared_data: Path):
    """The shared ISIC 2019 labels and lesion ids as an ImageSet (paths in the official layout, no pixels)."""
    import numpy as np
    import pandas as pd

    from ltbench.data.base import ImageSet
    from ltbench.data.isic import ISIC2019_COLUMNS, read_onehot_csv

    isic = shared_data / "isic"
    ids, labels = read_onehot_csv(isic / "ISIC_2019_Training_GroundTruth.csv", ISIC2019_COLUMNS)
    meta = pd.read_csv(isic / "ISIC_2019_Training_Metadata.csv", dtype=str, keep_default_na=False).set_index("image")
    groups = np.array([meta.at[i, "lesion_id"] or None for i in ids], dtype=object)
    return ImageSet(ids=ids, labels=labels, class_names=ISIC2019_COLUMNS[:8],
                    paths=[Path("ISIC_2019_Training_Input") / f"{i}.jpg" for i in ids], groups=groups)
