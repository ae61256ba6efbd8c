"""Label-preserving views (issue 20): each dataset declares the flips and rotations its labels survive,
the presets drop the others, and datasets that allow everything keep the presets' exact bits and run keys."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ltbench.bench import load_benchmark
from ltbench.data import augment as A
from ltbench.data.augment import batch
from ltbench.data.augment import randaugment as R
from ltbench.data.datasets import DATASETS, DIGITS_GEOMETRY, get_dataset, register_dataset
from ltbench.data.geometry import ANY_GEOMETRY, DEFAULT_GEOMETRY, ViewGeometry
from ltbench.errors import LtbenchError
from ltbench.registry import list_methods
from ltbench.runs import DataSpec, prepare_data, run_key
from ltbench.trainer import TrainConfig, Trainer
from tests.helpers import cpu_config

REPO = Path(__file__).resolve().parents[1]
S = 16
NO_FLIP = ViewGeometry(hflip=False, vflip=False, rotation=10.0)


def _images(n: int = 24, size: int = 20) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _presets() -> list[str]:
    list_methods()  # methods register their own presets (flexsampling_ssl) on import
    return A.list_augmentations()


# ------------------------------------------------------------------------------ declarations

def test_each_dataset_declares_what_its_labels_survive():
    for name in ("isic2018", "isic2019", "dermamnist", "synthetic"):
        assert get_dataset(name).geometry == ANY_GEOMETRY, name
    digits = get_dataset("digits-lt")
    assert digits.geometry == DIGITS_GEOMETRY == ViewGeometry(hflip=False, vflip=False, rotation=30.0)
    assert digits.version == 3  # issue 20: its views changed, so do its run keys
    assert DEFAULT_GEOMETRY == ViewGeometry(hflip=True, vflip=False, rotation=0.0)


def test_a_dataset_registered_without_a_declaration_gets_a_horizontal_flip_only():
    try:
        register_dataset("test-user-set", "a user's dataset")(lambda: None)
        assert get_dataset("test-user-set").geometry == DEFAULT_GEOMETRY
        key = DataSpec("test-user-set").identity()
        # Its views changed from "everything" to a horizontal flip only: its run keys move with it.
        assert key["geometry"] == {"hflip": True, "vflip": False, "rotation": 0.0}
    finally:
        DATASETS.pop("test-user-set", None)


def test_view_geometry_rules():
    with pytest.raises(ValueError, match="in \\[0, 180\\]"):
        ViewGeometry(rotation=200)
    with pytest.raises(ValueError, match="both flips or neither"):
        ViewGeometry(hflip=True, vflip=False, rotation=180)  # h-flip + half turn = v-flip
    assert ANY_GEOMETRY.is_any and not DIGITS_GEOMETRY.is_any
    assert DIGITS_GEOMETRY.describe() == "no flip, rotation up to ±30°"
    assert ANY_GEOMETRY.describe() == "h- and v-flip, any rotation"
    assert DEFAULT_GEOMETRY.describe() == "h-flip, no rotation"


# ------------------------------------------------------------------------------ presets

@pytest.mark.parametrize("name", _presets())
def test_a_dataset_that_allows_everything_gets_every_preset_bit_for_bit(name):
    images = _images()
    want = A.get_augmentation(name, S)(images, _gen(), sizes=None)
    got = A.get_augmentation(name, S, ANY_GEOMETRY)(images, _gen(), sizes=None)
    assert torch.equal(got, want)


@pytest.mark.parametrize("name", _presets())
def test_restricted_presets_keep_their_random_stream(name):
    """Same draws, so the generator ends in the same state and colour draws stay with their image."""
    images = _images()
    a, b = _gen(), _gen()
    A.get_augmentation(name, S)(images, a)
    A.get_augmentation(name, S, DIGITS_GEOMETRY)(images, b)
    assert torch.equal(a.get_state(), b.get_state())


def test_batch_augment_restricted_drops_flips_and_caps_the_rotation():
    contrastive = A.get_augmentation("contrastive", S)
    view = A.get_augmentation("contrastive", S, DIGITS_GEOMETRY)
    assert (view.hflip_p, view.vflip_p, view.rotation_deg) == (0.0, 0.0, 30.0)
    assert (contrastive.hflip_p, contrastive.vflip_p, contrastive.rotation_deg) == (0.5, 0.5, 90.0)  # untouched
    drawn = view.sample_geometry(4096, 20, 20, _gen())
    assert not drawn.hflip.any() and not drawn.vflip.any()
    assert drawn.angle.abs().max() <= 30.0 and drawn.angle.abs().max() > 29.0
    assert contrastive.restricted(ANY_GEOMETRY) is contrastive
    # h-flip allowed, no rotation: the v-flip goes, the rotation is dropped.
    hflip_only = contrastive.restricted(DEFAULT_GEOMETRY)
    assert (hflip_only.hflip_p, hflip_only.vflip_p, hflip_only.rotation_deg) == (0.5, 0.0, 0.0)


def test_standard_without_flips_is_standard_with_its_flips_undone():
    """The jitter commutes with a flip: the restricted view is the preset's output flipped back where it flipped."""
    images = _images(batch.CPU_CHUNK)  # one chunk: sample_geometry draws what forward draws
    full = A.get_augmentation("standard", S)
    flipped = full.sample_geometry(len(images), 20, 20, _gen()).hflip
    assert 0 < int(flipped.sum()) < len(images)
    want = full(images, _gen())
    want[flipped] = want[flipped].flip(-1)
    got = A.get_augmentation("standard", S, NO_FLIP)(images, _gen())
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)  # contrast's mean sums the flipped pixels in another order


def test_randaugment_restricted_drops_the_flip_and_caps_rotate():
    view = A.get_augmentation("randaugment", S, NO_FLIP)
    assert view.base.hflip_p == 0.0 and view.randaugment.max_rotate == 10.0
    assert A.get_augmentation("randaugment", S).randaugment.max_rotate == R.MAX_ROTATE == 30.0
    # digits-lt allows ±30°, BCL's own Rotate: RandAugment is unchanged there, only the flip goes.
    assert A.get_augmentation("randaugment", S, DIGITS_GEOMETRY).randaugment.max_rotate == 30.0
    m, s = torch.tensor([10.0, 9.0]), torch.tensor([1.0, -1.0])
    assert R.op_argument("Rotate", m, s, max_rotate=10.0).tolist() == pytest.approx([10.0, -9.0])


def test_a_preset_that_cannot_drop_what_the_dataset_forbids_is_refused():
    A.register_augmentation("test-rigid", lambda size: (lambda images, generator=None, sizes=None: images))
    try:
        assert A.get_augmentation("test-rigid", S, ANY_GEOMETRY) is not None  # allows everything: as registered
        with pytest.raises(LtbenchError, match="'test-rigid' has no restricted"):
            A.get_augmentation("test-rigid", S, DIGITS_GEOMETRY)
    finally:
        A.unregister_augmentation("test-rigid")


# ------------------------------------------------------------------------------ data, trainer, run keys

def test_the_datasets_geometry_reaches_the_training_streams():
    prepared = prepare_data(DataSpec("digits-lt"), S)
    assert prepared.bundle.geometry == DIGITS_GEOMETRY

    from ltbench import create_method
    from ltbench.stages import Stage

    method = create_method("ecl")  # views: standard, contrastive
    trainer = Trainer(cpu_config(), progress=False)
    labels = prepared.bundle.labels[prepared.bundle.train]
    streams = trainer._streams(method, Stage(), 0, prepared.bundle, labels, {})
    try:
        standard, contrastive = streams[0].augmentations
        assert standard.hflip_p == 0.0
        assert (contrastive.hflip_p, contrastive.vflip_p, contrastive.rotation_deg) == (0.0, 0.0, 30.0)
    finally:
        for stream in streams:
            stream.close()


def test_isic_benchmarks_keep_their_data_identity():
    """Flips and any rotation are what the presets always did: no ISIC run key moves (every split kind)."""
    files = sorted((REPO / "benchmarks").glob("isic*.yaml"))
    assert len(files) >= 6  # isic2018(-ecl), isic2019(-ecl, -flamby, -flexsampling, -monica, -retrieval)
    for path in files:
        spec = load_benchmark(path).data
        assert spec.view_geometry == ANY_GEOMETRY, path.name
        assert "geometry" not in spec.identity(), path.name


def test_a_benchmark_file_sets_the_geometry(tmp_path):
    def bench(geometry: str | None, dataset: str = "digits-lt"):
        path = tmp_path / "b.yaml"
        extra = "" if geometry is None else f", geometry: {geometry}"
        path.write_text(f"dataset: {{name: {dataset}{extra}}}\nmethods: [ce]\n")
        return load_benchmark(path)

    config = TrainConfig(backbone="small-cnn")
    plain = bench(None).data
    assert plain.geometry is None and plain.view_geometry == DIGITS_GEOMETRY
    same = bench("{hflip: false, vflip: false, rotation: 30}").data
    assert run_key("ce", {}, 0, config, same, "h") == run_key("ce", {}, 0, config, plain, "h")
    # Keys left out keep the dataset's declaration.
    assert bench("{rotation: 15}").data.view_geometry == ViewGeometry(False, False, 15.0)
    moved = bench("{rotation: 15}").data
    assert run_key("ce", {}, 0, config, moved, "h") != run_key("ce", {}, 0, config, plain, "h")
    # Everything allowed, written out: the same data identity as no key at all.
    isic = bench("{hflip: true, vflip: true, rotation: 180}", "isic2019").data
    assert isic.identity() == DataSpec("isic2019").identity()


@pytest.mark.parametrize("geometry, fragment", [
    ("{rotation: 200}", "dataset.geometry.rotation = 200: expected degrees in [0, 180]"),
    ("{rotation: abc}", "dataset.geometry.rotation = 'abc': expected a number"),
    ("{hflip: maybe}", "dataset.geometry.hflip = 'maybe'"),
    ("{mirror: true}", "dataset.geometry.mirror = true: not a geometry key"),
    ("flips", "dataset.geometry = 'flips': expected a mapping"),
    ("{hflip: true, vflip: false, rotation: 180}", "dataset.geometry: with any rotation"),
])
def test_bad_geometry_is_one_line_naming_the_file_and_key(tmp_path, geometry, fragment):
    path = tmp_path / "b.yaml"
    path.write_text(f"dataset: {{name: digits-lt, geometry: {geometry}}}\nmethods: [ce]\n")
    with pytest.raises(LtbenchError) as err:
        load_benchmark(path)
    message = str(err.value)
    assert "\n" not in message and message.startswith(str(path)) and fragment in message, message


def test_result_records_the_geometry(tmp_path):
    from ltbench.runs import run_one

    prepared = prepare_data(DataSpec("digits-lt"), S)
    result, trained = run_one("ce", {}, 0, cpu_config(epochs=1, batch_size=64), DataSpec("digits-lt"), prepared,
                              tmp_path, progress=False)
    assert trained and result["dataset"]["geometry"] == {"hflip": False, "vflip": False, "rotation": 30.0}
    assert np.isfinite(result["test"]["acc"])
