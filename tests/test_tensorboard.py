"""TensorBoard: the trainer callback and ``inception-lab train --tensorboard``, read back with tensorboard's
EventAccumulator: loss, accuracy, learning rate, gradient norm (against an independent measurement) and the dead
fraction of the watched layer, each step once across a resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from analysis.callbacks import Callback
from analysis.data.synthetic import make_synthetic
from analysis.instruments.dead_units import DeadUnitAlarm
from analysis.training.config import TrainConfig
from analysis.training.tensorboard import TensorBoardLogger
from analysis.training.trainer import Trainer, seed_everything
from inception_models import create_model

from helpers import run_cli

pytestmark = pytest.mark.usefixtures("one_thread")


def _events(folder: Path) -> EventAccumulator:
    events = EventAccumulator(str(folder))
    events.Reload()
    return events


def _steps(events: EventAccumulator, tag: str) -> list[int]:
    return [e.step for e in events.Scalars(tag)]


def _values(events: EventAccumulator, tag: str) -> dict[int, float]:
    return {e.step: e.value for e in events.Scalars(tag)}


class GradNorm(Callback):
    """The gradient's global norm at every step, measured by torch's clipping function (with no clipping)."""

    def __init__(self) -> None:
        self.norms: dict[int, float] = {}

    def on_after_backward(self, trainer, batch, loss) -> None:
        self.norms[trainer.step + 1] = float(torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), float("inf")))


def _fit(out: Path, steps: int, callbacks: list, *, resume: bool = False) -> Trainer:
    train = make_synthetic("train", 16, 32, 0).tensors()
    val = make_synthetic("val", 8, 32, 0).tensors()
    config = TrainConfig(model="small_inception", steps=steps, batch_size=4, lr=0.05, log_every=2, eval_every=3,
                         checkpoint_every=2, device="cpu", out_dir=out / "run", resume=resume, progress=False)
    seed_everything(0)
    trainer = Trainer(create_model("small_inception", num_classes=10, width_mult=0.25), config, train, val,
                      callbacks=callbacks)
    trainer.fit()
    return trainer


def test_the_callback_writes_loss_accuracy_lr_grad_norm_and_the_dead_fraction(tmp_path: Path):
    norms, alarm = GradNorm(), DeadUnitAlarm(every=2)
    trainer = _fit(tmp_path, 6, [alarm, norms, TensorBoardLogger(tmp_path / "tb")])
    events = _events(tmp_path / "tb")
    layer = alarm.layer
    assert set(events.Tags()["scalars"]) >= {  # and whatever else the trainer logs (train/loss_mean, ...)
        "train/loss", "train/accuracy", "train/lr", "train/grad_norm", "val/loss", "val/accuracy", f"dead_units/{layer}/dead_fraction", f"dead_units/{layer}/dead_units",
        f"dead_units/{layer}/dormant_fraction", f"dead_units/{layer}/zero_fraction"}
    rows = {(r["split"], r["step"]): r for r in trainer.history}
    assert _steps(events, "train/loss") == [2, 4, 6] and _steps(events, "val/loss") == [3, 6]
    for tag in ("loss", "accuracy", "lr"):
        for step, value in _values(events, f"train/{tag}").items():
            assert value == pytest.approx(rows[("train", step)][tag], rel=1e-6), (tag, step)
    for step, value in _values(events, "val/accuracy").items():
        assert value == pytest.approx(rows[("val", step)]["accuracy"], rel=1e-6)
    for step, value in _values(events, "train/grad_norm").items():
        assert value == pytest.approx(norms.norms[step], rel=1e-5)
    dead = _values(events, f"dead_units/{layer}/dead_fraction")
    assert sorted(dead) == [2, 4, 6]
    assert [dead[s] for s in (2, 4, 6)] == pytest.approx([h["dead_fraction"] for h in alarm.history])


def test_a_resumed_run_logs_each_step_once(tmp_path: Path):
    _fit(tmp_path, 4, [TensorBoardLogger(tmp_path / "tb")])
    _fit(tmp_path, 6, [TensorBoardLogger(tmp_path / "tb")], resume=True)
    events = _events(tmp_path / "tb")
    assert _steps(events, "train/loss") == [2, 4, 6]
    assert _steps(events, "val/loss") == [3, 4, 6]  # the first run's last evaluation, at its end, is kept


def test_train_writes_tensorboard_events_from_the_command_line(monkeypatch, capsys, tmp_path: Path):
    code, out, err = run_cli(monkeypatch, capsys, "train", "small_inception", "--data", "synthetic", "--batch-size",
                             "4", "--n-train", "16", "--n-val", "8", "--image-size", "32", "-k", "width_mult=0.25",
                             "--device", "cpu", "--steps", "4", "--out", str(tmp_path / "run"), "--tensorboard",
                             str(tmp_path / "tb"), "--dead-units-every", "2", "--format", "csv")
    assert code == 0, err
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    tags = set(_events(tmp_path / "tb").Tags()["scalars"])
    assert {"train/loss", "train/accuracy", "train/lr", "train/grad_norm", "val/loss"} <= tags
    assert any(t.startswith("dead_units/") and t.endswith("/dead_fraction") for t in tags)


def test_without_tensorboard_the_command_line_names_the_extra(monkeypatch, capsys, tmp_path: Path):
    import sys

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    monkeypatch.delitem(sys.modules, "analysis.training.tensorboard", raising=False)
    code, out, err = run_cli(monkeypatch, capsys, "train", "small_inception", "--data", "synthetic", "--n-train",
                             "8", "--image-size", "32", "--steps", "1", "--out", str(tmp_path / "run"),
                             "--tensorboard", str(tmp_path / "tb"))
    assert code == 2 and err == "error: TensorBoard logging needs tensorboard: pip install 'inception-lab[tensorboard]'\n"


def test_an_experiments_points_log_to_tensorboard_when_asked(monkeypatch, tmp_path: Path):
    """`inception-lab experiment ... --tensorboard DIR` sets TENSORBOARD_ENV: each trained point gets its curves."""
    from analysis.experiments.runner import TENSORBOARD_ENV, train_point
    from analysis.training.sweep import point_id

    point = dict(n_train=8, n_val=4, image_size=32, steps=2, batch_size=4, lr=0.05, log_every=1, device="cpu",
                 seed=0)
    monkeypatch.setenv(TENSORBOARD_ENV, str(tmp_path / "tb"))
    outcome = train_point(point, "small_inception", model_kwargs={"width_mult": 0.25})
    events = _events(tmp_path / "tb" / point_id(point))
    assert _values(events, "train/loss") == pytest.approx(
        {r["step"]: r["loss"] for r in outcome.trainer.history if r["split"] == "train"})
