"""The checkpoint rule and the other rules' choices (ltbench/trainer/selection.py, issue 26)."""
from __future__ import annotations

import numpy as np
import pytest
import torch.nn.functional as F

import ltbench.trainer.loop as trainer_module
from ltbench.errors import LtbenchError
from ltbench.method import Method
from ltbench.metrics import SELECTABLE
from ltbench.registry import create_method
from ltbench.trainer.selection import Candidates, epochs_from_history, selection_score
from ltbench.stages import Stage
from ltbench.trainer import Trainer, TrainConfig
from tests.helpers import cpu_config, synthetic_data

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data():
    return synthetic_data()


def test_last_and_f1_are_rules_and_last_scores_the_epoch():
    assert "last" in SELECTABLE and "f1" in SELECTABLE
    assert TrainConfig(select_metric="last").select_metric == "last"
    with pytest.raises(LtbenchError, match="last"):  # the one-line error lists the rules
        TrainConfig(select_metric="bacc")
    assert selection_score({"sen": 40.0}, "sen", 7) == 40.0
    assert selection_score({"sen": 40.0}, "last", 7) == 7.0


def test_candidates_follow_every_rule_and_test_only_at_new_bests():
    calls = []

    def test(epoch):
        return lambda: calls.append(epoch) or np.full((2, 3), epoch, dtype=np.float32)

    c = Candidates("sen")
    vals = [(50, 20, 10), (60, 18, 12), (55, 30, 11), (60, 25, 9), (40, 30, 13)]  # acc, sen, f1 per epoch
    for epoch, (acc, sen, f1) in enumerate(vals):
        c.offer(epoch, {"acc": acc, "sen": sen, "f1": f1}, selectable=True, test=test(epoch))
    c.offer(5, {"acc": 99, "sen": 99, "f1": 99}, selectable=False, test=test(5))  # never chosen
    c.finish(test(5))  # the final epoch is not selectable: no "last" pass
    # ties keep the earlier epoch (acc 60 at 1 and 3; sen 30 at 2 and 4)
    assert c.epochs() == {"sen": 2, "acc": 1, "f1": 4, "last": 4}
    assert calls == [0, 1, 2, 4]  # epoch 3 improved no rule
    arrays = c.arrays()
    assert list(arrays["selection_rules"]) == ["sen", "acc", "f1", "last"]
    assert arrays["selection_epochs"].tolist() == [2, 1, 4, 4]
    assert arrays["selection_tested"].tolist() == [1, 2, 4]  # epoch 0 pruned once overtaken
    assert arrays["selection_test_probs"][:, 0, 0].tolist() == [1.0, 2.0, 4.0]
    # a checkpoint round trip keeps everything
    restored = Candidates("sen")
    restored.load(c.state())
    for key, value in c.arrays().items():
        np.testing.assert_array_equal(restored.arrays()[key], value)


def test_the_last_rule_is_tested_once_at_the_end():
    calls = []
    c = Candidates("acc")
    for epoch, acc in enumerate([70, 60, 50]):
        c.offer(epoch, {"acc": acc, "sen": 10, "f1": 10}, True, lambda e=epoch: calls.append(e) or np.zeros((1, 1)))
    c.finish(lambda: calls.append("end") or np.ones((1, 1)))
    assert c.epochs() == {"acc": 0, "sen": 0, "f1": 0, "last": 2}
    assert calls == [0, "end"]
    assert c.arrays()["selection_tested"].tolist() == [0, 2]


def test_select_last_tests_the_last_epoch_and_the_candidates_hold_the_tested_model(data):
    run = Trainer(cpu_config(epochs=3, select_metric="last"), progress=False).fit(create_method("ce"), data.bundle)
    assert run.best_epoch == 2
    rules = list(run.arrays["selection_rules"])
    assert rules[0] == "last" and set(rules) == {"last", "acc", "sen", "f1"}
    epochs = dict(zip(rules, run.arrays["selection_epochs"].tolist()))
    tested = run.arrays["selection_tested"].tolist()
    # the rule in use: its candidate pass is exactly the final test (same state, same evaluation)
    np.testing.assert_array_equal(run.arrays["selection_test_probs"][tested.index(2)], run.arrays["test_probs"])
    # the metric rules' epochs are the first maxima of the validation history
    for rule in ("acc", "sen", "f1"):
        values = [h["val"][rule] for h in run.history]
        assert epochs[rule] == int(np.argmax(values)), rule
        assert epochs[rule] in tested
    assert epochs_from_history(run.history, run.best_epoch, rules) == epochs


class _SelectableThenFrozen(Method):
    """Stage 1 (selectable) trains everything; stage 2 (not selectable) only the head."""

    def stages(self, info):
        return [Stage(epochs=2, name="a"), Stage(epochs=1, trains=("head",), selectable=False, name="b")]

    def training_step(self, model, batch):
        return F.cross_entropy(model(batch.views[0]).float(), batch.labels)


def test_last_is_the_last_epoch_of_the_last_selectable_stage(data):
    run = Trainer(cpu_config(epochs=3, select_metric="last"), progress=False).fit(_SelectableThenFrozen(), data.bundle)
    assert run.best_epoch == 1
    epochs = dict(zip(run.arrays["selection_rules"], run.arrays["selection_epochs"].tolist()))
    assert epochs["last"] == 1 and all(e in (0, 1) for e in epochs.values())
    assert 1 in run.arrays["selection_tested"].tolist()  # tested when it was the last rule's, before stage b
    np.testing.assert_array_equal(
        run.arrays["selection_test_probs"][run.arrays["selection_tested"].tolist().index(1)], run.arrays["test_probs"])


class _NoTestPasses(Candidates):
    """Candidates that never run a test pass (the trainer as it was before them)."""

    def offer(self, epoch, metrics, selectable, test):
        super().offer(epoch, metrics, selectable, lambda: np.zeros((1, 1), np.float32))

    def finish(self, test):
        pass


@pytest.mark.parametrize("name", ["ce", "ecl"])
def test_the_candidate_test_passes_change_no_result(name, data, monkeypatch):
    config = cpu_config(epochs=3, select_metric="sen")
    with_passes = Trainer(config, progress=False).fit(create_method(name), data.bundle)
    monkeypatch.setattr(trainer_module, "Candidates", _NoTestPasses)
    without = Trainer(config, progress=False).fit(create_method(name), data.bundle)
    assert with_passes.history == [{**h, "train_time_s": a["train_time_s"]} for h, a in
                                   zip(without.history, with_passes.history)]
    assert with_passes.best_epoch == without.best_epoch and with_passes.test == without.test
    np.testing.assert_array_equal(with_passes.arrays["test_probs"], without.arrays["test_probs"])


# ------------------------------------------------------------------------------ real ISIC 2018 images

def _real_isic2018_root(tmp_path, isic2018_test_images):
    """The 1,512 real test images laid out as the official training folder (symlinks, as tests/test_cli.py)."""
    import os

    import pandas as pd

    root = tmp_path / "isic2018"
    folder = root / "ISIC2018_Task3_Training_Input"
    folder.mkdir(parents=True)
    gt = pd.read_csv(isic2018_test_images / "ISIC2018_Task3_Test_GroundTruth.csv")
    for image_id in gt["image"]:
        os.symlink(isic2018_test_images / "images" / f"{image_id}.jpg", folder / f"{image_id}.jpg")
    gt.to_csv(root / "ISIC2018_Task3_Training_GroundTruth.csv", index=False)
    return root


@pytest.mark.slow
def test_a_real_isic2018_bench_shows_the_selection_table(tmp_path, isic2018_test_images):
    """ce, ldam_drw and ecl on the real images at 24 px, 3 epochs, 2 seeds, the dataset's default rule (~50 s)."""
    from ltbench.cli import main
    from ltbench.report import load_results
    from ltbench.report.selection import run_selection

    root = _real_isic2018_root(tmp_path, isic2018_test_images)
    bench = tmp_path / "bench.yaml"
    bench.write_text(f"""\
name: isic2018-selection
dataset: {{name: isic2018, data_root: {root}}}
train: {{backbone: small-cnn, image_size: 24, epochs: 3, batch_size: 64, lr: 0.05, device: cpu}}
seeds: [0, 1]
methods: {{ce: {{}}, ldam_drw: {{}}, ecl: {{}}}}
cache_dir: {tmp_path / "cache"}
""")
    out = tmp_path / "out"
    assert main(["bench", "--benchmark", str(bench), "--out", str(out), "--quiet"]) == 0
    results = load_results(out / "runs")
    assert {r["config"]["select_metric"] for r in results} == {"sen"}  # the isic2018 default protocol
    for r in results:  # each rule maximises its own validation metric over the same epochs
        chosen = run_selection(r, out / "runs")
        assert set(chosen) == {"sen", "acc", "f1", "last"} and chosen["last"]["epoch"] == 2
        assert chosen["sen"]["epoch"] == r["best_epoch"]
        assert chosen["sen"]["val"]["sen"] >= chosen["acc"]["val"]["sen"]
        assert chosen["acc"]["val"]["acc"] >= chosen["sen"]["val"]["acc"]
        assert all(c["test"] is not None for c in chosen.values())
        assert chosen["sen"]["test"]["sen"] == pytest.approx(r["test"]["sen"])
    evidence = (out / "evidence.md").read_text()
    section = evidence[evidence.index("## Selection sensitivity"):evidence.index("## Per class")]
    for method in ("ce", "ldam_drw", "ecl"):
        for rule in ("**sen** (used)", "acc", "f1", "last"):
            assert f"| {method}" in section and f"| {rule}" in section
    assert "Validation only" not in section
    assert "checkpoint: best validation Sen" in (out / "summary.md").read_text()
    print(section)  # the figure of the closing note (pytest -s)
