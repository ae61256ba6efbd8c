"""Protocol options of issue 15/16: optimiser, lr warm-up and schedules, MONICA's group metric.

Schedules are checked against torch's own schedulers stepped once per epoch; the group metric
against a hand-worked confusion matrix; run keys stay put at the defaults (tests/test_config.py
pins every shipped row's key) and move when an option is set.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ltbench import create_method
from ltbench.errors import LtbenchError
from ltbench.metrics import compute_metrics, group_classes
from ltbench.runs import DataSpec, run_key
from ltbench.schedules import cosine_lr, stage_lr
from ltbench.stages import Stage
from ltbench.trainer import TrainConfig, Trainer
from tests.helpers import cpu_config, synthetic_data, torchvision_resizes_uint8_natively


def torch_lrs(make_scheduler, epochs: int, base: float = 0.1) -> list[float]:
    """The lr of each epoch of a torch scheduler stepped once per epoch."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base)
    scheduler = make_scheduler(optimizer)
    out = []
    for _ in range(epochs):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def test_warm_up_then_cosine_is_torchs_linear_then_cosine_annealing():
    """FlexSampling's examples/train.py: LinearLR(start_factor=0.01, total_iters=5) then cosine."""
    epochs, warmup = 20, 5
    want = torch_lrs(lambda opt: torch.optim.lr_scheduler.SequentialLR(opt, [
        torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.01, total_iters=warmup),
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs - warmup)], milestones=[warmup]), epochs)
    got = [stage_lr(0.1, e, epochs, "cosine", warmup_epochs=warmup, warmup_start_factor=0.01) for e in range(epochs)]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)


def test_step_schedule_is_multistep_lr():
    """The retrieval paper's protocol: × 0.1 at epochs 40, 60, 80, 100 of 120."""
    milestones = (40, 60, 80, 100)
    want = torch_lrs(lambda opt: torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(milestones), gamma=0.1), 120)
    got = [stage_lr(0.1, e, 120, "step", milestones, 0.1) for e in range(120)]
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_no_warm_up_cosine_is_exactly_the_former_schedule():
    assert all(stage_lr(0.05, e, 30) == cosine_lr(0.05, e, 30) for e in range(30))  # exact: golden runs rely on it
    assert stage_lr(0.05, 7, 30, "constant") == 0.05


def test_an_adam_run_trains_with_adam_and_the_lr_schedule_reaches_it():
    data = synthetic_data()
    seen = []

    def pre_step(optimizer, args, kwargs):
        seen.append((type(optimizer).__name__, optimizer.param_groups[0]["lr"], optimizer.param_groups[0].get("betas")))

    from torch.optim.optimizer import register_optimizer_step_pre_hook

    handle = register_optimizer_step_pre_hook(pre_step)
    try:
        run = Trainer(cpu_config(epochs=3, optimizer="adam", lr=3e-4, betas=(0.8, 0.99), lr_schedule="constant"),
                      progress=False).fit(create_method("ce"), data.bundle)
    finally:
        handle.remove()
    assert {name for name, _, _ in seen} == {"Adam"}
    assert {lr for _, lr, _ in seen} == {3e-4}
    assert {betas for _, _, betas in seen} == {(0.8, 0.99)}
    assert [h["lr"] for h in run.history] == [3e-4] * 3


def test_a_stage_may_name_its_own_optimizer():
    trainer = Trainer(cpu_config(), progress=False)
    params = [torch.nn.Parameter(torch.zeros(2))]
    assert isinstance(trainer._optimizer(params, Stage(optimizer="adam"), 1e-3), torch.optim.Adam)
    assert isinstance(trainer._optimizer(params, Stage(), 1e-3), torch.optim.SGD)
    with pytest.raises(LtbenchError, match="optimizer must be 'sgd' or 'adam'"):
        Stage(optimizer="lamb")


def test_new_options_at_their_defaults_leave_the_run_key_and_set_ones_move_it():
    spec = DataSpec("digits-lt")
    base = run_key("ce", {}, 0, cpu_config(), spec, "h")
    assert base == run_key("ce", {}, 0, cpu_config(optimizer="sgd", warmup_epochs=0, lr_schedule="cosine",
                                                   group_sizes=()), spec, "h")
    for change in ({"optimizer": "adam"}, {"warmup_epochs": 5}, {"lr_schedule": "step", "lr_milestones": (3,)},
                   {"group_sizes": (2, 3)}, {"betas": (0.8, 0.9)}):
        assert run_key("ce", {}, 0, cpu_config(**change), spec, "h") != base, change


@pytest.mark.parametrize("change,problem", [
    ({"optimizer": "rmsprop"}, "choose one of sgd, adam"),
    ({"lr_schedule": "poly"}, "choose one of cosine, step, constant"),
    ({"lr_milestones": (5, 3)}, "increasing"),
    ({"warmup_epochs": -1}, "must be 0 or more"),
    ({"warmup_start_factor": 0.0}, "must be in"),
    ({"betas": (0.9, 1.0)}, "each beta must be in"),
    ({"group_sizes": (2,)}, "head, medium"),
    ({"select_metric": "bacc"}, "group_acc"),
])
def test_bad_protocol_options_are_one_line(change, problem):
    with pytest.raises(LtbenchError, match=problem):
        TrainConfig(**change)


# ------------------------------------------------------------------------------ MONICA's metric


def test_monica_group_mean_accuracy_on_a_hand_built_confusion_matrix():
    """8 classes ranked by training count, head = 2, medium = 3, tail = 3 (MONICA's head: 2, medium: 5)."""
    train_counts = [5000, 2590, 1342, 695, 360, 187, 97, 51]  # FlexSampling's ratio-100 training split
    recall = np.array([0.9, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1])
    labels, preds = [], []
    for c, r in enumerate(recall):  # 10 test images per class, round(10 r) of them right, the rest -> class 0/1
        right = int(round(10 * r))
        labels += [c] * 10
        preds += [c] * right + [(c + 1) % 8] * (10 - right)
    probs = np.eye(8)[preds]
    m = compute_metrics(np.array(labels), probs, [str(c) for c in range(8)], train_counts, group_sizes=(2, 3))
    head, medium, tail = (0.9 + 0.7) / 2, (0.6 + 0.5 + 0.4) / 3, (0.3 + 0.2 + 0.1) / 3
    assert m["group_acc"] == pytest.approx(100 * (head + medium + tail) / 3)
    assert m["group_recall"] == pytest.approx({"head": 100 * head, "medium": 100 * medium, "tail": 100 * tail})
    assert m["groups"] == {"head": ["0", "1"], "medium": ["2", "3", "4"], "tail": ["5", "6", "7"]}
    # Not overall accuracy, not balanced accuracy (the class weights are 1/6, 1/6, 1/9 x 3, 1/9 x 3)
    assert not math.isclose(m["group_acc"], m["sen"]) and not math.isclose(m["group_acc"], m["acc"])


def test_group_sizes_order_by_training_count_not_class_index():
    assert group_classes([10, 50, 30, 20, 40], (1, 2)) == {"head": [1], "medium": [4, 2], "tail": [3, 0]}
    assert group_classes([10, 50, 30, 20, 40]) == {"head": [1, 4], "medium": [2, 3], "tail": [0]}  # terciles
    with pytest.raises(LtbenchError, match="leave no tail"):
        group_classes([3, 2, 1], (2, 1))


def test_selecting_by_group_acc_uses_the_validation_group_metric():
    data = synthetic_data()
    run = Trainer(cpu_config(epochs=3, select_metric="group_acc", group_sizes=(1, 1)),
                  progress=False).fit(create_method("ce"), data.bundle)
    assert "group_acc" in run.val and "group_acc" in run.test
    assert run.test["groups"]["head"] == [data.bundle.class_names[int(np.argmax(data.bundle.counts(data.bundle.train)))]]


# ------------------------------------------------------------------------------ the command line


def test_set_reaches_the_run_and_its_result_file(capsys, monkeypatch, tmp_path):
    import json

    from tests.test_cli import run_inline

    proc = run_inline("train", "--method", "ce", "--dataset", "synthetic", "--epochs", "2", "--set", "optimizer=adam",
                      "--set", "lr=3e-4", "--set", "lr_schedule=step", "--set", "lr_milestones=[1]",
                      "--out", str(tmp_path / "out"), capsys=capsys, monkeypatch=monkeypatch, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "optimizer=adam" in proc.stdout  # the settings line names what is not a default
    result = json.loads((tmp_path / "out" / "runs" / "ce" / "seed0.json").read_text())
    assert [h["lr"] for h in result["history"]] == [3e-4, pytest.approx(3e-5)]


@pytest.mark.parametrize("args,fragments", [
    (("--set", "optimizer=lamb"), ("--set optimizer=lamb", "choose one of sgd, adam")),
    (("--set", "warmup"), ("--set 'warmup'", "expected KEY=VALUE")),
    (("--set", "nope=1"), ("--set nope=1", "not a training setting")),
])
def test_bad_set_is_one_line(args, fragments, capsys, monkeypatch, tmp_path):
    from tests.test_cli import assert_one_line_error, run_inline

    proc = run_inline("train", "--method", "ce", *args, capsys=capsys, monkeypatch=monkeypatch, cwd=tmp_path)
    assert_one_line_error(proc, *fragments)


# ------------------------------------------------------------------------------ the report


def test_the_report_shows_monica_group_mean_accuracy_and_names_the_protocol():
    from ltbench.report.summary import _context, _header_line, markdown_table, summarize
    from tests.test_report import NUMBERS, fake_result

    results = [fake_result(m, seed, vals, 0.6) for m, rows in NUMBERS.items() for seed, vals in enumerate(rows)]
    assert "MONICA" not in markdown_table(summarize(results))  # not asked for: no column
    for r in results:
        r["config"].update(select_metric="group_acc", group_sizes=[1, 1], optimizer="adam", lr_schedule="constant")
    summary = summarize(results).set_index("method")
    # older results carry no group_acc: the mean of their group recalls is MONICA's number
    assert summary.loc["ce", "group_acc_mean"] == pytest.approx(
        np.mean([np.mean(v[5:]) for v in NUMBERS["ce"]]))
    assert "Group-mean acc (MONICA)" in markdown_table(summarize(results))
    header = _header_line(_context(results))
    assert "optimiser: adam (betas (0.9, 0.999)" in header and "constant lr" in header
    assert "group_sizes [1, 1]" in header


# ------------------------------------------------------------------------------ evaluation view


def test_plain_half_is_resize_and_normalize_half_and_reaches_training_and_evaluation():
    from torchvision.transforms import v2

    from ltbench.data.augment import get_augmentation

    images = torch.randint(0, 256, (4, 3, 12, 12), dtype=torch.uint8)
    want = v2.Compose([v2.Resize((16, 16), antialias=True), v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize((0.5,) * 3, (0.5,) * 3)])(images)
    got = get_augmentation("plain_half", 16)(images, torch.Generator().manual_seed(0))
    # The same uint8 resize where torchvision runs it, else one uint8 level (2/255 here; tests/helpers.py).
    torch.testing.assert_close(got, want, atol=2e-6 if torchvision_resizes_uint8_natively() else 2 / 255 + 2e-6, rtol=0)
    assert torch.equal(get_augmentation("plain_half", 16)(images, torch.Generator().manual_seed(1)), got)

    data = synthetic_data()
    seen = []

    class Spy(type(create_method("ce"))):
        def training_step(self, model, batch):
            seen.append(float(batch.views[0].min()))
            return super().training_step(model, batch)

    trainer = Trainer(cpu_config(epochs=1, eval_view="plain_half"), progress=False)
    trainer.fit(Spy(view="plain_half"), data.bundle)
    assert min(seen) >= -1.0 - 1e-6  # 0.5/0.5 normalisation: never below -1 (ImageNet's reaches -2.1)
    assert isinstance(trainer.eval_transform(), type(get_augmentation("plain_half", 16)))
    assert trainer.eval_transform().mean == (0.5, 0.5, 0.5)


def test_eval_view_must_be_a_deterministic_preset():
    with pytest.raises(LtbenchError, match="must be deterministic"):
        TrainConfig(eval_view="contrastive")
    with pytest.raises(LtbenchError, match="not an augmentation preset"):
        TrainConfig(eval_view="nope")


def test_bench_takes_set_and_the_retrieval_switch(capsys, monkeypatch, tmp_path):
    import json

    from tests.test_cli import assert_one_line_error, run_inline

    (tmp_path / "b.yaml").write_text("name: b\ndataset: synthetic\ntrain: {epochs: 1}\nretrieval: true\n"
                                     "seeds: [0]\nmethods: [ce]\n")
    cli = lambda *args: run_inline(*args, capsys=capsys, monkeypatch=monkeypatch, cwd=tmp_path)  # noqa: E731
    proc = cli("bench", "--benchmark", "b.yaml", "--set", "optimizer=adam", "--set", "lr=1e-3", "--no-retrieval",
               "--quiet", "--out", "out")
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "out" / "runs" / "ce" / "seed0.json").read_text())
    assert result["config"]["optimizer"] == "adam" and result["config"]["lr"] == 1e-3
    assert "retrieval" not in result and not (tmp_path / "out" / "runs" / "ce" / "seed0.emb.npz").exists()
    assert_one_line_error(cli("bench", "--benchmark", "b.yaml", "--ratio", "300"), "--ratio 300", "choose one of")
    assert_one_line_error(cli("bench", "--benchmark", "b.yaml", "--set", "momentum=-1"), "--set momentum=-1")


def test_train_retrieval_flag_runs_the_pass_and_prints_its_headline(capsys, monkeypatch, tmp_path):
    import json

    from tests.test_cli import run_inline

    proc = run_inline("train", "--method", "ce", "--dataset", "synthetic", "--epochs", "1", "--retrieval",
                      "--out", str(tmp_path / "out"), capsys=capsys, monkeypatch=monkeypatch, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "retrieval (class-macro): feature mAP@all" in proc.stdout
    result = json.loads((tmp_path / "out" / "runs" / "ce" / "seed0.json").read_text())
    assert result["retrieval"]["spaces"]["feature"]["map_all"]["macro"] >= 0
    assert (tmp_path / "out" / "runs" / "ce" / "seed0.emb.npz").is_file()
