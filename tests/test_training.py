"""The trainer: learning, exact resume, divergence, losses, the RMSProp preset, DDP, and resumable sweeps."""

from __future__ import annotations

import json
import math
import os
import socket
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from analysis.callbacks import Callback
from analysis.training.checkpoint import CHECKPOINT_FILE, load_checkpoint, read_metrics
from analysis.training.config import TrainConfig
from analysis.training.loss import InceptionLoss
from analysis.training.optim import RMSpropTF, make_optimizer
from analysis.training.sampling import epoch_order
from analysis.training.sweep import point_id, run_sweep
from analysis.training.trainer import Trainer, TrainingDiverged
from inception_models.base import InceptionOutputs

NUM_CLASSES = 4


pytestmark = pytest.mark.usefixtures("one_thread")


def toy_data(n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose class is the brightest of four quadrants: learnable by a small conv net in a few dozen steps."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 8, 8, generator=g) * 0.5
    y = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    for i, label in enumerate(y.tolist()):
        r, c = divmod(label, 2)
        x[i, :, r * 4:(r + 1) * 4, c * 4:(c + 1) * 4] += 1.5
    return x, y


class ToyNet(nn.Module):
    """Conv, ReLU, dropout, linear; with ``aux=True`` it returns InceptionOutputs in training like GoogLeNet."""

    def __init__(self, dropout: float = 0.2, aux: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(32, NUM_CLASSES)
        self.aux = nn.ModuleList([nn.Linear(32, NUM_CLASSES), nn.Linear(32, NUM_CLASSES)]) if aux else None

    def forward(self, x: torch.Tensor):
        h = torch.flatten(self.pool(self.act(self.conv(x))), 1)
        logits = self.fc(self.drop(h))
        if self.aux is not None and self.training:
            return InceptionOutputs(logits, tuple(head(h) for head in self.aux))
        return logits


def toy_config(tmp_path: Path | None = None, **overrides) -> TrainConfig:
    values = dict(steps=24, batch_size=8, lr=0.1, momentum=0.9, device="cpu", seed=3, log_every=1, progress=False,
                  out_dir=None if tmp_path is None else str(tmp_path))
    values.update(overrides)
    return TrainConfig(**values)


def train_losses(history: pd.DataFrame) -> list[float]:
    train = history[history["split"] == "train"]
    return train["loss"].tolist()


# ------------------------------------------------------------------------------------------- learning
def test_loss_falls_on_a_learnable_toy_task():
    torch.manual_seed(0)
    history = Trainer(ToyNet(), toy_config(steps=40), toy_data(), val_data=toy_data(32, seed=1)).fit()
    losses = train_losses(history)
    assert len(losses) == 40
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert first > 1.2, first  # chance level is ln 4 = 1.386
    assert last < 0.5 * first, (first, last)
    val = history[history["split"] == "val"]
    assert len(val) == 1 and val["accuracy"].iloc[0] >= 0.75


def test_data_order_is_a_pure_function_of_seed_and_epoch():
    assert torch.equal(epoch_order(50, 3, 2), epoch_order(50, 3, 2))
    assert not torch.equal(epoch_order(50, 3, 2), epoch_order(50, 3, 1))
    assert sorted(epoch_order(50, 3, 2).tolist()) == list(range(50))


# --------------------------------------------------------------------------------------------- resume
class Kill(Callback):
    """Stops the run at ``at``: by raising (a kill: no checkpoint at the kill) or by request_stop."""

    def __init__(self, at: int, hard: bool) -> None:
        self.at, self.hard = at, hard

    def on_step_end(self, trainer, batch, loss):
        if trainer.step == self.at:
            if self.hard:
                raise KeyboardInterrupt("simulated kill")
            trainer.request_stop("simulated preemption")


@pytest.mark.parametrize("hard", [True, False], ids=["kill", "request_stop"])
def test_resume_after_a_kill_gives_the_uninterrupted_loss_curve(tmp_path, hard):
    data = toy_data(48)  # 6 steps per epoch: the checkpoints at steps 4 and 7 sit mid-epoch
    config = dict(steps=15, checkpoint_every=4, eval_every=5)

    torch.manual_seed(0)
    reference = Trainer(ToyNet(), toy_config(tmp_path / "ref", **config), data, val_data=data).fit()

    torch.manual_seed(0)
    killed = Trainer(ToyNet(), toy_config(tmp_path / "run", **config), data, val_data=data,
                     callbacks=[Kill(at=7, hard=hard)])
    if hard:
        with pytest.raises(KeyboardInterrupt):
            killed.fit()
        assert load_checkpoint(tmp_path / "run")["step"] == 4
        assert read_metrics(tmp_path / "run")["step"].max() == 6  # rows 5, 6 (and val 5) are cut on resume
    else:
        killed.fit()
        assert load_checkpoint(tmp_path / "run")["step"] == 7

    torch.manual_seed(1234)  # a different init and RNG: everything must come from the checkpoint
    resumed = Trainer(ToyNet(), toy_config(tmp_path / "run", resume=True, **config), data, val_data=data).fit()

    assert train_losses(resumed) == train_losses(reference)  # bit-exact on the CPU
    logged = read_metrics(tmp_path / "run")
    assert logged["loss"].tolist() == reference["loss"].tolist()
    assert logged["split"].tolist() == reference["split"].tolist()
    assert logged["step"].tolist() == reference["step"].tolist()
    final_ref = load_checkpoint(tmp_path / "ref")["model"]
    final_run = load_checkpoint(tmp_path / "run")["model"]
    for name in final_ref:
        assert torch.equal(final_ref[name], final_run[name]), name


def test_resume_refuses_a_different_batch_size(tmp_path):
    data = toy_data(32)
    Trainer(ToyNet(), toy_config(tmp_path, steps=4), data).fit()
    with pytest.raises(ValueError, match="batch_size=8"):
        Trainer(ToyNet(), toy_config(tmp_path, steps=8, batch_size=16, resume=True), data).fit()


# ------------------------------------------------------------------------------------------ divergence
class PoisonGradients(Callback):
    def __init__(self, at: int) -> None:
        self.at = at

    def on_after_backward(self, trainer, batch, loss):
        if trainer.step + 1 == self.at:
            for p in trainer.model.parameters():
                p.grad.fill_(float("nan"))


def test_nan_gradients_stop_the_run_and_keep_the_last_good_checkpoint(tmp_path):
    trainer = Trainer(ToyNet(), toy_config(tmp_path, checkpoint_every=1), toy_data(), callbacks=[PoisonGradients(5)])
    with pytest.raises(TrainingDiverged, match="step 5") as err:
        trainer.fit()
    assert err.value.step == 5
    state = load_checkpoint(tmp_path)
    assert state["step"] == 4
    model = ToyNet()
    model.load_state_dict(state["model"])
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_an_exploding_lr_names_the_step_with_the_nonfinite_loss(tmp_path):
    config = toy_config(tmp_path, lr=1e30, momentum=0.0, checkpoint_every=1)
    with pytest.raises(TrainingDiverged) as err:
        Trainer(ToyNet(dropout=0.0), config, toy_data()).fit()
    step = err.value.step
    assert f"training diverged at step {step}: the loss is" in str(err.value)
    assert step >= 2
    state = load_checkpoint(tmp_path)
    assert state["step"] == step - 1
    logged = read_metrics(tmp_path)
    assert logged["step"].max() == step - 1 and logged["loss"].map(math.isfinite).all()


# -------------------------------------------------------------------------------------------- losses
def test_label_smoothing_and_aux_weights_match_the_hand_computed_loss():
    g = torch.Generator().manual_seed(0)
    logits, aux1, aux2 = (torch.randn(5, NUM_CLASSES, generator=g) for _ in range(3))
    targets = torch.tensor([0, 1, 2, 3, 1])

    def by_hand(z: torch.Tensor, eps: float) -> torch.Tensor:
        logp = torch.log_softmax(z, dim=1)
        nll = -logp[torch.arange(5), targets]
        return ((1 - eps) * nll + eps * -logp.mean(dim=1)).mean()

    plain = InceptionLoss(0.0, 0.3)(logits, targets)
    assert torch.allclose(plain, by_hand(logits, 0.0))
    smoothed = InceptionLoss(0.1, 0.3)(logits, targets)
    assert torch.allclose(smoothed, by_hand(logits, 0.1))
    assert smoothed.item() != pytest.approx(plain.item(), abs=1e-3)
    with_aux = InceptionLoss(0.1, 0.3)(InceptionOutputs(logits, (aux1, aux2)), targets)
    assert torch.allclose(with_aux, by_hand(logits, 0.1) + 0.3 * (by_hand(aux1, 0.1) + by_hand(aux2, 0.1)))
    per_head = InceptionLoss(0.0, (0.3, 0.0))(InceptionOutputs(logits, (aux1, aux2)), targets)
    assert torch.allclose(per_head, by_hand(logits, 0.0) + 0.3 * by_hand(aux1, 0.0))
    single = InceptionLoss(0.0, 0.4)(InceptionOutputs(logits, aux1), targets)
    assert torch.allclose(single, by_hand(logits, 0.0) + 0.4 * by_hand(aux1, 0.0))


def test_the_trainer_logs_the_loss_of_its_criterion_on_the_first_batch():
    x, y = toy_data(32)
    torch.manual_seed(0)
    model = ToyNet(dropout=0.0, aux=True)
    initial = ToyNet(dropout=0.0, aux=True)
    initial.load_state_dict(model.state_dict())
    config = toy_config(steps=1, label_smoothing=0.1, aux_weight=0.3)
    history = Trainer(model, config, (x, y)).fit()
    first = epoch_order(32, config.seed, 0)[:8]
    out = initial.train()(x[first])
    expected = (F.cross_entropy(out.logits, y[first], label_smoothing=0.1)
                + 0.3 * sum(F.cross_entropy(a, y[first], label_smoothing=0.1) for a in out.aux_logits))
    assert history["loss"].iloc[0] == pytest.approx(expected.item(), rel=1e-6)


# ------------------------------------------------------------------------------------------ optimiser
def test_rmsprop_preset_lr_after_four_epochs():
    config = TrainConfig.preset("inception_v3", epochs=4, batch_size=8, device="cpu", progress=False, log_every=1)
    assert (config.optimizer, config.lr, config.rmsprop_decay, config.rmsprop_eps) == ("rmsprop", 0.045, 0.9, 1.0)
    trainer = Trainer(ToyNet(), config, toy_data(32))  # 4 steps per epoch
    history = trainer.fit()
    assert trainer.step == 16
    assert trainer.lr == pytest.approx(0.045 * 0.94**2, rel=1e-12)
    lr_by_step = dict(zip(history["step"], history["lr"]))  # the lr each step ran with
    assert lr_by_step[8] == pytest.approx(0.045)
    assert lr_by_step[9] == pytest.approx(0.045 * 0.94)
    assert lr_by_step[16] == pytest.approx(0.045 * 0.94)
    assert isinstance(trainer.optimizer, RMSpropTF)


def test_rmsprop_tf_step_matches_the_tensorflow_formula():
    w = nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = RMSpropTF([w], lr=0.045, decay=0.9, eps=1.0, momentum=0.9)
    g = torch.tensor([0.5, 3.0])
    w.grad = g.clone()
    opt.step()
    ms = 0.9 * 1.0 + 0.1 * g**2  # the accumulator starts at one, as in TensorFlow
    mom = 0.045 * g / torch.sqrt(ms + 1.0)
    assert torch.allclose(w.detach(), torch.tensor([1.0, -2.0]) - mom)
    w.grad = g.clone()
    opt.step()
    ms2 = 0.9 * ms + 0.1 * g**2
    mom2 = 0.9 * mom + 0.045 * g / torch.sqrt(ms2 + 1.0)
    assert torch.allclose(w.detach(), torch.tensor([1.0, -2.0]) - mom - mom2)


def test_adamw_first_step_is_the_closed_form_with_momentum_as_beta1():
    """AdamW's first update is lr * sign(g) (bias-corrected moments: m/sqrt(v) = g/|g|) after decoupled weight
    decay w *= 1 - lr * wd; ``momentum`` is its beta1."""
    config = TrainConfig(optimizer="adamw", lr=0.01, momentum=0.8, weight_decay=0.1, device="cpu", progress=False)
    w = nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    model = nn.Module()
    model.w = w
    opt = make_optimizer(model, config)
    assert opt.param_groups[0]["betas"] == (0.8, 0.999)
    w.grad = torch.tensor([0.3, -4.0, 2.0])
    opt.step()
    start = torch.tensor([1.0, -2.0, 0.5])
    expected = start * (1 - 0.01 * 0.1) - 0.01 * torch.sign(torch.tensor([0.3, -4.0, 2.0]))
    assert torch.allclose(w.detach(), expected, atol=1e-6)
    with pytest.raises(ValueError, match="optimizer='adam' is not supported"):
        TrainConfig(optimizer="adam", device="cpu").validate()


# ------------------------------------------------------------------------------------------- callbacks
class Recorder(Callback):
    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []

    def on_train_start(self, trainer):
        self.events.append(("start", trainer.step))

    def on_after_backward(self, trainer, batch, loss):
        assert all(p.grad is not None for p in trainer.model.parameters())
        self.events.append(("backward", trainer.step))

    def on_step_end(self, trainer, batch, loss):
        self.events.append(("step", trainer.step))
        if trainer.step % 2 == 0:
            trainer.log_metrics({"grad_probe": torch.tensor(float(trainer.step))})

    def on_train_end(self, trainer):
        self.events.append(("end", trainer.step))


def test_callback_protocol_order_and_metrics(tmp_path):
    recorder = Recorder()
    history = Trainer(ToyNet(), toy_config(tmp_path, steps=3, log_every=3), toy_data(32), callbacks=[recorder]).fit()
    assert recorder.events == [("start", 0), ("backward", 0), ("step", 1), ("backward", 1), ("step", 2),
                               ("backward", 2), ("step", 3), ("end", 3)]
    assert history["step"].tolist() == [2, 3]  # step 2 is logged because a callback added a metric
    assert history["grad_probe"].iloc[0] == 2.0
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [2, 3]


def test_bad_config_is_a_clear_error():
    with pytest.raises(ValueError, match="optimizer='adam'"):
        Trainer(ToyNet(), toy_config(optimizer="adam"), toy_data(16))
    with pytest.raises(ValueError, match="steps=N or epochs=E"):
        Trainer(ToyNet(), toy_config(steps=None), toy_data(16))
    with pytest.raises(TypeError, match="map-style Dataset"):
        Trainer(ToyNet(), toy_config(), (i for i in range(3)))
    with pytest.raises(ValueError, match="fewer than one batch"):
        Trainer(ToyNet(), toy_config(batch_size=64), toy_data(16))


# ------------------------------------------------------------------------------------------- hardware
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_and_channels_last_train_close_to_fp32(amp):
    results = {}
    for mode in (None, amp):
        torch.manual_seed(0)
        history = Trainer(ToyNet(dropout=0.0), toy_config(steps=3, amp=mode, channels_last=mode is not None),
                          toy_data(32)).fit()
        results[mode] = history
    assert results[amp]["loss"].tolist() == pytest.approx(results[None]["loss"].tolist(), abs=0.03)
    assert results[amp]["loss"].tolist() != results[None]["loss"].tolist()  # the low precision did run
    if amp == "fp16":
        assert results[amp]["loss_scale"].iloc[-1] == 2.0**16  # the GradScaler's initial scale, no overflow


@pytest.mark.slow
def test_torch_compile_matches_eager():
    losses = []
    for compile in (False, True):
        torch.manual_seed(0)
        history = Trainer(ToyNet(dropout=0.0), toy_config(steps=3, compile=compile), toy_data(32)).fit()
        losses.append(history["loss"].tolist())
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)


# ------------------------------------------------------------------------------ the zoo and the CLI entry
def test_the_train_command_trains_a_registry_model_on_synthetic_shapes_and_resumes(tmp_path, monkeypatch):
    from analysis.cli import main

    def train(out, *options: str) -> pd.DataFrame:
        monkeypatch.setattr(sys, "argv", ["inception-lab", "train", "small_inception", "--data", "shapes", "--out",
                                          str(out), "--batch-size", "4", "--n-train", "16", "--n-val", "8",
                                          "--device", "cpu", "-k", "width_mult=0.25", "-k", "drop_rate=0.3",
                                          "--format", "csv", *options])  # dropout: the RNG must resume too
        with pytest.raises(SystemExit) as exit_:
            main()
        assert exit_.value.code in (0, None)
        return read_metrics(out)

    run = tmp_path / "run"
    first = train(run, "--steps", "2")
    assert first["split"].tolist() == ["train", "val"]  # the last step is logged whatever the cadence
    config = json.loads((run / "config.json").read_text())
    assert config["model_kwargs"] == {"width_mult": 0.25, "drop_rate": 0.3, "num_classes": 10}  # classes: the data
    assert config["steps_per_epoch"] == 4
    both = train(run, "--steps", "6", "--resume")
    assert both["step"].tolist() == [2, 2, 6, 6]
    assert both["loss"].iloc[:2].tolist() == first["loss"].tolist()
    assert load_checkpoint(run / CHECKPOINT_FILE)["step"] == 6

    # The extended run is the uninterrupted 6-step run, across the epoch boundary at step 4 (bit for bit on the
    # CPU): the same logged rows after the first run's, and the same weights and buffers.
    uninterrupted = train(tmp_path / "uninterrupted", "--steps", "6")
    columns = ["split", "step", "loss", "accuracy", "lr"]
    resumed = both.iloc[len(first):][columns].reset_index(drop=True)
    pd.testing.assert_frame_equal(resumed, uninterrupted[columns].reset_index(drop=True), check_exact=True)
    final, expected = load_checkpoint(run)["model"], load_checkpoint(tmp_path / "uninterrupted")["model"]
    for name, value in expected.items():
        assert torch.equal(final[name], value), name


# ---------------------------------------------------------------------------------------- DDP on gloo
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn_ddp(out_dir: Path, tries: int = 3) -> None:
    """Two gloo workers that join through the trainer's own env:// rendezvous on a free port. The port is free
    when picked, but another process may take it before rank 0 listens on it: then rank 0 fails with EADDRINUSE
    and the pair is spawned again on a new port, in a clean folder."""
    import shutil

    import torch.multiprocessing as mp

    for attempt in range(tries):
        shutil.rmtree(out_dir, ignore_errors=True)
        try:
            mp.spawn(_ddp_worker, args=(2, _free_port(), str(out_dir)), nprocs=2, join=True)
            return
        except mp.ProcessRaisedException as err:
            if "EADDRINUSE" not in str(err) or attempt == tries - 1:
                raise


def _ddp_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = ToyNet(dropout=0.0)
    with Trainer(model, toy_config(out_dir, steps=8, batch_size=16), toy_data(64)) as trainer:
        trainer.fit()
        # After fit() the group is still there: evaluate() reduces over both ranks' shards.
        metrics = trainer.evaluate(toy_data(33, seed=2))
    Path(out_dir, f"eval-rank{rank}.json").write_text(json.dumps(metrics))


@pytest.mark.slow  # about 5 s on an idle 2-core machine, 30 s on a busy one: two spawned interpreters
def test_ddp_on_two_gloo_processes_matches_one_process(tmp_path):
    _spawn_ddp(tmp_path / "ddp")

    torch.manual_seed(0)
    one = Trainer(ToyNet(dropout=0.0), toy_config(tmp_path / "one", steps=8, batch_size=16), toy_data(64))
    single = one.fit()
    expected = one.evaluate(toy_data(33, seed=2))
    for rank in (0, 1):  # every rank reports the whole set (33 samples: shards of 17 and 16), not its shard
        evaluated = json.loads((tmp_path / "ddp" / f"eval-rank{rank}.json").read_text())
        assert evaluated["samples"] == 33
        assert evaluated["loss"] == pytest.approx(expected["loss"], rel=1e-5)
        assert evaluated["accuracy"] == expected["accuracy"]
    ddp = read_metrics(tmp_path / "ddp")
    assert len(ddp) == 8
    assert ddp["loss"].tolist() == pytest.approx(train_losses(single), rel=1e-5)
    assert ddp["accuracy"].tolist() == single["accuracy"].tolist()
    assert json.loads((tmp_path / "ddp" / "config.json").read_text())["world_size"] == 2
    state_ddp, state_one = load_checkpoint(tmp_path / "ddp"), load_checkpoint(tmp_path / "one")
    assert len(state_ddp["rng"]) == 2
    for name, value in state_one["model"].items():
        assert torch.allclose(state_ddp["model"][name], value, atol=1e-5), name


# -------------------------------------------------------------------------------------------- sweeps
def _sweep_point(point: dict) -> pd.DataFrame:
    """A sweep point that records each call in a file and fails while a 'fail' marker file exists."""
    folder = Path(point["folder"])
    with open(folder / "calls.txt", "a") as f:
        f.write(f"{point['width']}\n")
    if point["width"] == point.get("fail_at") and (folder / "fail").exists():
        raise RuntimeError("simulated crash")
    return pd.DataFrame({"step": [1, 2], "loss": [1.0 / point["width"], 0.5 / point["width"]]})


@pytest.mark.parametrize("isolate", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["in_process", "spawned"])
def test_sweep_skips_finished_points_and_resumes(tmp_path, isolate):
    (tmp_path / "fail").touch()
    points = [dict(width=w, folder=str(tmp_path), fail_at=2) for w in (1, 2, 3)]
    results = tmp_path / "results.jsonl"
    with pytest.raises(RuntimeError, match="width"):
        run_sweep(points, _sweep_point, results, isolate=isolate)
    table = pd.read_json(results, lines=True)
    assert table["width"].tolist() == [1, 1]  # only the finished point is in the table

    (tmp_path / "fail").unlink()
    table = run_sweep(points, _sweep_point, results, isolate=isolate)
    assert (tmp_path / "calls.txt").read_text().split() == ["1", "2", "2", "3"]  # point 1 was not run again
    assert table["width"].tolist() == [1, 1, 2, 2, 3, 3]
    assert table["point_id"].nunique() == 3
    assert table["point_id"].iloc[0] == point_id(points[0])
    assert table["loss"].tolist() == pytest.approx([1, 0.5, 0.5, 0.25, 1 / 3, 1 / 6])

    again = run_sweep(points, _sweep_point, results, isolate=isolate)
    assert (tmp_path / "calls.txt").read_text().split() == ["1", "2", "2", "3"]
    pd.testing.assert_frame_equal(again, table)


def test_point_id_is_stable_and_order_independent():
    assert point_id({"a": 1, "b": [1, 2]}) == point_id({"b": [1, 2], "a": 1})
    assert point_id({"a": 1}) != point_id({"a": 2})
    assert len(point_id({"a": 1})) == 12
