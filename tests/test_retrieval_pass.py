"""The retrieval pass of a run (ltbench/retrieval/run_pass.py) and the named representations of the Method API."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ltbench.bench import load_benchmark, run_benchmark
from ltbench.errors import LtbenchError
from ltbench.method import TrainInfo
from ltbench.models import build_backbone
from ltbench.registry import create_method, list_methods
from ltbench.retrieval.metrics import p10_r4_macro, retrieval_metrics
from ltbench.retrieval.run_pass import (RetrievalSettings, embedding_path, load_embeddings, metrics_from_file,
                                        summary_for_json)
from ltbench.runs import DataSpec, prepare_data, result_paths, run_one
from tests.helpers import cpu_config, tiny_clip

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# An image-level split of the synthetic lesions: test lesions also have training images, so the
# same-lesion exclusion has something to exclude.
LEAKY = DataSpec(dataset="synthetic", options={"num_classes": 4, "n_max": 80, "imbalance": 5.0},
                 split="stratified", split_seed=0)
CONTRASTIVE = {"ecl", "scl", "tsc", "simclr", "bcl", "hybrid_sc"}
ON = RetrievalSettings(enabled=True)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def leaky():
    return prepare_data(LEAKY, 16)


def _info(prepared) -> TrainInfo:
    b = prepared.bundle
    return TrainInfo(tuple(b.counts(b.train)), tuple(b.class_names), 2, 4, torch.device("cpu"))


# ----------------------------------------------------------------------------- representations

@pytest.mark.parametrize("name", list_methods())
def test_representations_names_shapes_and_predict_unchanged(name, leaky):
    torch.manual_seed(0)
    method = create_method(name)
    info = _info(leaky)
    method.setup(info)
    # a method that needs a CLIP tower gets the tests' tiny random-init one (no download)
    backbone = build_backbone(tiny_clip() if method.requires else "small-cnn", None, 16)
    d = backbone.out_dim
    model = method.build_model(backbone, info).eval()
    method.eval()
    x = torch.randn(6, 3, 16, 16)
    with torch.inference_mode():
        before = method.predict(model, x).clone()
        reps = method.representations(model, x)
        after = method.predict(model, x)
    assert torch.equal(before, after)  # logits do not depend on the call
    expected = {"feature"}
    if name in CONTRASTIVE:
        expected |= {"embedding"}
    if name == "rotation_hashing":
        expected |= {"hash", "hash_binary"}
    assert expected <= set(reps), sorted(reps)
    if name == "lift":  # LIFT's classifier reads the tower's features before CLIP's projection
        d = backbone.unprojected(x).shape[1]
    assert reps["feature"].shape == (6, {"bbn": 2, "sade": 3}.get(name, 1) * d)  # branches / experts side by side
    for value in reps.values():
        assert value.ndim == 2 and value.shape[0] == 6 and torch.isfinite(value.float()).all()
    if "embedding" in reps:  # the projection head's output is already L2-normalised
        assert torch.allclose(reps["embedding"].norm(dim=1), torch.ones(6), atol=1e-5)
    if name == "rotation_hashing":
        u = reps["hash"]
        assert u.shape == (6, method.bits) and ((u > 0) & (u < 1)).all()
        assert torch.equal(reps["hash_binary"], torch.sign(u - 0.5))
        assert torch.equal(reps["feature"], model.backbone(x))
    if name == "bbn":
        f_c, f_r = model.branch_features(x)
        assert torch.equal(reps["feature"], torch.cat([f_c, f_r], dim=1))


# ----------------------------------------------------------------------------- the pass in a run

@pytest.fixture(scope="module")
def hashing_run(leaky, tmp_path_factory):
    out = tmp_path_factory.mktemp("hashing")
    result, trained = run_one("rotation_hashing", {}, 0, cpu_config(epochs=1), LEAKY, leaky, out, progress=False,
                              retrieval=ON)
    assert trained
    return out, result


def test_pass_writes_float16_embeddings_beside_the_run(hashing_run, leaky):
    out, result = hashing_run
    json_path, _ = result_paths(out, "rotation_hashing", 0)
    path = embedding_path(json_path)
    assert path == json_path.with_name("seed0.emb.npz") and path.is_file()
    assert result["retrieval"]["file"] == "seed0.emb.npz"
    arrays = load_embeddings(path)
    b = leaky.bundle
    assert np.array_equal(arrays["database_rows"], b.train) and np.array_equal(arrays["query_rows"], b.test)
    assert np.array_equal(arrays["database_labels"], b.labels[b.train])
    assert arrays["feature/database"].dtype == np.float16 and arrays["feature/database"].shape[0] == len(b.train)
    assert arrays["feature/queries"].shape == (len(b.test), arrays["feature/database"].shape[1])
    assert arrays["hash/queries"].dtype == np.float16 and arrays["hash/queries"].shape == (len(b.test), 16)
    assert arrays["hash_binary/database"].dtype == np.int8
    assert set(np.unique(arrays["hash_binary/database"])) <= {-1, 0, 1}
    thumbs = arrays["examples/top_thumbs"]
    assert thumbs.dtype == np.uint8 and thumbs.shape[:2] == (4, 5)  # one query per class, its top 5
    assert arrays["examples/query_thumbs"].shape[0] == 4


def test_stored_metrics_equal_direct_computation_on_the_stored_embeddings(hashing_run, leaky):
    out, result = hashing_run
    arrays = load_embeddings(embedding_path(result_paths(out, "rotation_hashing", 0)[0]))
    groups = np.asarray(leaky.image_set.groups, dtype=object)
    b = leaky.bundle
    stored = json.loads(result_paths(out, "rotation_hashing", 0)[0].read_text())["retrieval"]["spaces"]
    assert set(stored) == {"feature", "hash", "hash_binary"}
    for space, metric in (("feature", "cosine"), ("hash", "cosine"), ("hash_binary", "hamming")):
        direct = retrieval_metrics(arrays[f"{space}/queries"], b.labels[b.test], arrays[f"{space}/database"],
                                   b.labels[b.train], 4, metric, query_groups=list(groups[b.test]),
                                   database_groups=list(groups[b.train]), exclude_same_group=True)
        direct = json.loads(json.dumps({k: v for k, v in direct.items() if k != "pr_curve"}))
        got = {k: v for k, v in stored[space].items() if k != "p10_r4"}
        assert got == direct, space
        assert direct["same_lesion_excluded"] > 0  # the image-level split leaks: exclusion is exercised
    p10 = p10_r4_macro(arrays["hash/queries"], arrays["hash_binary/queries"], b.labels[b.test],
                       arrays["hash/database"], arrays["hash_binary/database"], b.labels[b.train], 4, radius=4, top_k=10)
    assert stored["hash"]["p10_r4"] == json.loads(json.dumps(p10))
    # The file alone reproduces the run's numbers (what `ltbench report` relies on).
    again = json.loads(json.dumps(summary_for_json(metrics_from_file(embedding_path(
        result_paths(out, "rotation_hashing", 0)[0]), 4))))
    assert again == stored


def test_exclusion_off_keeps_the_same_lesion_images(hashing_run, leaky):
    out, _ = hashing_run
    path = embedding_path(result_paths(out, "rotation_hashing", 0)[0])
    on, off = metrics_from_file(path, 4, True)["feature"], metrics_from_file(path, 4, False)["feature"]
    assert off["same_lesion_excluded"] is None and on["same_lesion_excluded"] > 0
    assert len(off["pr_curve"]["precision"]) == len(leaky.bundle.train) > len(on["pr_curve"]["precision"])


def test_retrieval_leaves_run_key_and_classification_unchanged(leaky, tmp_path):
    config = cpu_config(epochs=2)
    plain, _ = run_one("ce", {}, 0, config, LEAKY, leaky, tmp_path / "plain", progress=False)
    with_r, _ = run_one("ce", {}, 0, config, LEAKY, leaky, tmp_path / "with", progress=False, retrieval=ON)
    assert "retrieval" not in plain and with_r["retrieval"]["spaces"]["feature"]["queries"] == len(leaky.bundle.test)
    assert plain["run_key"] == with_r["run_key"]
    untimed = [[{k: v for k, v in h.items() if k != "train_time_s"} for h in r["history"]] for r in (plain, with_r)]
    assert untimed[0] == untimed[1]
    for key in ("best_epoch", "val", "test"):
        assert plain[key] == with_r[key], key
    a = np.load(result_paths(tmp_path / "plain", "ce", 0)[1])
    b = np.load(result_paths(tmp_path / "with", "ce", 0)[1])
    assert all(np.array_equal(a[k], b[k]) for k in a.files)
    assert not embedding_path(result_paths(tmp_path / "plain", "ce", 0)[0]).exists()

    # A stored result without retrieval is returned as it is (no weights to embed with) ...
    again, trained = run_one("ce", {}, 0, config, LEAKY, leaky, tmp_path / "plain", progress=False, retrieval=ON)
    assert not trained and "retrieval" not in again
    # ... and retrained for it only when asked (bench --force), to the same classification result.
    forced, trained = run_one("ce", {}, 0, config, LEAKY, leaky, tmp_path / "plain", progress=False, retrieval=ON,
                              replace_stale=True)
    assert trained and forced["retrieval"]["spaces"] and forced["run_key"] == plain["run_key"]
    assert forced["test"] == plain["test"]


# ----------------------------------------------------------------------------- settings and benchmark files

def test_settings_parse():
    assert RetrievalSettings.parse(None, "b.yaml: retrieval") == RetrievalSettings(enabled=False)
    assert RetrievalSettings.parse(True, "x") == RetrievalSettings(enabled=True)
    assert RetrievalSettings.parse({"exclude_same_lesion": False}, "x") == RetrievalSettings(True, False)
    assert RetrievalSettings.parse({"enabled": False}, "x").enabled is False
    with pytest.raises(LtbenchError, match=r"b.yaml: retrieval = 'yes': expected true, false or a mapping"):
        RetrievalSettings.parse("yes", "b.yaml: retrieval")
    with pytest.raises(LtbenchError, match="unknown key"):
        RetrievalSettings.parse({"k": 5}, "b.yaml: retrieval")
    with pytest.raises(LtbenchError, match=r"retrieval.enabled = 1: expected true or false"):
        RetrievalSettings.parse({"enabled": 1}, "b.yaml: retrieval")


def test_paper_protocol_benchmark_file():
    bench = load_benchmark(REPO / "benchmarks" / "isic2019-retrieval.yaml")
    t = bench.train
    assert bench.retrieval == RetrievalSettings(enabled=True, exclude_same_lesion=True)
    assert (t.backbone, t.pretrained, t.epochs, t.batch_size, t.lr, t.momentum, t.weight_decay) == \
        ("resnet18", None, 120, 64, 0.01, 0.9, 5e-4)
    assert (t.lr_schedule, t.lr_milestones, t.lr_gamma, t.optimizer) == ("step", (40, 60, 80, 100), 0.1, "sgd")
    assert bench.methods["rotation_hashing"].method == "rotation_hashing"
    assert bench.methods["rotation_hashing_no_attention"].params == {"attention": False, "view": "plain_half"}
    assert t.eval_view == "plain_half"  # the code's pipeline: no augmentation, Normalize(0.5, 0.5)


def _bench_file(tmp_path: Path, retrieval: str) -> Path:
    path = tmp_path / f"b_{retrieval.replace(' ', '')}.yaml"
    path.write_text(f"""name: rbench
dataset: {{name: synthetic, options: {{num_classes: 4, n_max: 80, imbalance: 5.0}}}}
split: {{kind: stratified, seed: 0}}
train: {{backbone: small-cnn, image_size: 16, epochs: 1, batch_size: 16, eval_batch_size: 64, lr: 0.05, device: cpu}}
seeds: [0]
methods: {{ce: {{}}}}
retrieval: {retrieval}
""")
    return path


@pytest.mark.slow
def test_bench_lists_runs_without_embeddings_and_force_retrains_them(tmp_path):
    out, lines = tmp_path / "out", []
    run_benchmark(load_benchmark(_bench_file(tmp_path, "false")), out, progress=False, echo=lines.append)
    assert not (out / "retrieval.md").exists()
    lines.clear()
    run_benchmark(load_benchmark(_bench_file(tmp_path, "true")), out, progress=False, echo=lines.append)
    assert any("no embeddings" in line and "ce seed 0" in line and "--force" in line for line in lines)
    assert not (out / "retrieval.md").exists()  # no run has retrieval results: nothing made up
    lines.clear()
    run_benchmark(load_benchmark(_bench_file(tmp_path, "true")), out, progress=False, echo=lines.append, force=True)
    assert not any("no embeddings" in line for line in lines)
    assert embedding_path(result_paths(out, "ce", 0)[0]).is_file() and (out / "retrieval.md").stat().st_size > 0
    assert "retrieval.md" in (out / "README.md").read_text()


def test_damaged_embedding_file_is_one_line(tmp_path):
    path = tmp_path / "seed0.emb.npz"
    path.write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(LtbenchError, match=r"seed0.emb.npz: unreadable embedding file"):
        metrics_from_file(path, 4)


def test_a_failing_pass_is_the_run_failure_and_retry_resumes_after_the_last_epoch(leaky, tmp_path):
    from ltbench.store.checkpoint import CheckpointStore, unplain
    from ltbench.methods.ce import CrossEntropy
    from ltbench.registry import register_method, unregister_method
    from ltbench.runs import RunFailed, failure_paths

    class Flat(CrossEntropy):
        broken = True

        def representations(self, model, images):
            features = model.backbone(images)
            return {"feature": features.flatten() if Flat.broken else features}

    register_method("flat_repr_test")(Flat)
    try:
        with pytest.raises(RunFailed, match="representation 'feature' has shape"):
            run_one("flat_repr_test", {}, 0, cpu_config(epochs=1), LEAKY, leaky, tmp_path, progress=False, retrieval=ON)
        json_path, _ = result_paths(tmp_path, "flat_repr_test", 0)
        assert failure_paths(tmp_path, "flat_repr_test", 0)[0].is_file() and not json_path.exists()
        key = json.loads(failure_paths(tmp_path, "flat_repr_test", 0)[0].read_text())["run_key"]
        saved = unplain(CheckpointStore(json_path.with_suffix(""), key).load()["history"])  # the trained epochs
        Flat.broken = False
        result, trained = run_one("flat_repr_test", {}, 0, cpu_config(epochs=1), LEAKY, leaky, tmp_path,
                                  progress=False, retrieval=ON, retry_failed=True)
        assert trained and result["retrieval"]["spaces"]["feature"]
        assert result["history"] == saved  # resumed after its last epoch (its timings too): nothing trained twice
    finally:
        unregister_method("flat_repr_test")
