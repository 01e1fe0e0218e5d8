"""Resume equals the uninterrupted run on a real recipe, and a failed checkpoint write loses nothing.

The recipe has everything a resume can forget: GoogLeNet with batch norm everywhere and both auxiliary heads
(dropout 0.2 and 0.7: the random generators), the Inception-v3 paper's RMSProp (two state buffers per
parameter) with a 3-step warm-up into a cosine schedule (the schedule's position), label smoothing, gradient
clipping, and a shuffled order with epochs of 5 batches, so that every stop falls mid-epoch (the data
position). A run stopped at step k, by ``request_stop`` or by SIGKILL of its process, then resumed in a fresh
trainer with a different initialisation, must reproduce the uninterrupted run bit for bit on the CPU: its
metrics log (loss, accuracy, lr and gradient norm at every step, the evaluations that read BN's running
statistics), every parameter and buffer, the optimiser state, the schedule and the random generators.
"""

from __future__ import annotations

import io
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

import analysis
from analysis import Callback, TrainConfig, Trainer, load_checkpoint, read_metrics
from inception_models import create_model

STEPS = 12
WARMUP = 3
CHECKPOINT_EVERY = 3
NUM_CLASSES = 4
IMAGE_SIZE = 32
N_TRAIN = 40  # 5 batches of 8 per epoch
FILES = {"checkpoint.pt", "config.json", "metrics.jsonl"}

pytestmark = pytest.mark.usefixtures("one_thread")


def recipe_config(out_dir: Path, **overrides) -> TrainConfig:
    """The Inception-v3 paper's recipe (RMSProp decay 0.9, eps 1.0, momentum 0.9, lr 0.045, label smoothing
    0.1, clipping at 2.0, aux weight 0.4) with a warm-up into a cosine schedule, evaluated every 5 steps."""
    values = dict(steps=STEPS, batch_size=8, schedule="cosine", warmup_steps=WARMUP, device="cpu", seed=11,
                  log_every=1, eval_every=5, checkpoint_every=CHECKPOINT_EVERY, progress=False, out_dir=str(out_dir))
    return TrainConfig.preset("inception_v3", **{**values, **overrides})


def recipe_model() -> torch.nn.Module:
    return create_model("googlenet", num_classes=NUM_CLASSES, aux_logits=True, width_mult=0.125)


def recipe_data() -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    train = (torch.randn(N_TRAIN, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g), torch.randint(0, NUM_CLASSES, (N_TRAIN,), generator=g))
    val = (torch.randn(16, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g), torch.randint(0, NUM_CLASSES, (16,), generator=g))
    return train, val


def recipe_trainer(out_dir: Path, *, init_seed: int = 0, callbacks=(), **overrides) -> Trainer:
    torch.manual_seed(init_seed)
    train, val = recipe_data()
    return Trainer(recipe_model(), recipe_config(out_dir, **overrides), train, val_data=val, callbacks=callbacks)


class LrRecorder(Callback):
    """The learning rate of every optimiser step, read from the optimiser itself: {step (1-based): lr}."""

    def __init__(self) -> None:
        self.lr: dict[int, float] = {}

    def on_after_backward(self, trainer, batch, loss):
        self.lr[trainer.step + 1] = trainer.optimizer.param_groups[0]["lr"]


class StopAt(Callback):
    def __init__(self, at: int) -> None:
        self.at = at

    def on_step_end(self, trainer, batch, loss):
        if trainer.step == self.at:
            trainer.request_stop("simulated preemption")


class HangAt(Callback):
    """Signals through ``marker`` once step ``at`` is finished (and logged), then waits to be killed."""

    def __init__(self, at: int, marker: str) -> None:
        self.at, self.marker = at, Path(marker)

    def on_after_backward(self, trainer, batch, loss):
        if trainer.step == self.at:
            self.marker.write_text(str(os.getpid()))
            time.sleep(300)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, one_thread):
    """The uninterrupted run: its folder and the lr of every step."""
    folder = tmp_path_factory.mktemp("reference")
    lrs = LrRecorder()
    recipe_trainer(folder, callbacks=[lrs]).fit()
    return folder, lrs.lr


def expected_lr(step: int) -> float:
    """Linear warm-up over the first 3 steps into a half cosine over the 12 steps (the lr of 1-based ``step``)."""
    done = step - 1
    return 0.045 * 0.5 * (1 + math.cos(math.pi * done / STEPS)) * min(1.0, (done + 1) / WARMUP)


def test_the_reference_run_follows_the_recipe(reference):
    folder, lrs = reference
    assert lrs == pytest.approx({s: expected_lr(s) for s in range(1, STEPS + 1)}, rel=1e-12)
    log = read_metrics(folder)
    assert log[log["split"] == "train"]["step"].tolist() == list(range(1, STEPS + 1))
    assert log[log["split"] == "val"]["step"].tolist() == [5, 10, 12]
    state = load_checkpoint(folder)
    assert set(state["optimizer"]["state"][0]) == {"square_avg", "momentum_buffer"}  # RMSpropTF
    assert state["model"]["aux1.conv.bn.num_batches_tracked"] == STEPS  # the aux heads trained


def assert_same_run(folder: Path, lrs: dict[int, float], reference) -> None:
    """``folder`` holds the run of ``reference`` bit for bit; ``lrs`` are the lrs seen after the resume."""
    ref_folder, ref_lrs = reference
    assert lrs == {s: ref_lrs[s] for s in lrs} and max(lrs) == STEPS
    log, ref_log = read_metrics(folder), read_metrics(ref_folder)
    pd.testing.assert_frame_equal(log.drop(columns="time"), ref_log.drop(columns="time"), check_exact=True)

    state, ref = load_checkpoint(folder), load_checkpoint(ref_folder)
    assert state["step"] == ref["step"] == STEPS
    assert state["model"].keys() == ref["model"].keys()
    for name, value in ref["model"].items():  # parameters and buffers: BN running statistics included
        assert torch.equal(state["model"][name], value), name
    assert state["optimizer"]["param_groups"] == ref["optimizer"]["param_groups"]
    assert state["optimizer"]["state"].keys() == ref["optimizer"]["state"].keys()
    for index, buffers in ref["optimizer"]["state"].items():
        for key, value in buffers.items():
            assert torch.equal(state["optimizer"]["state"][index][key], value), (index, key)
    assert state["scheduler"] == ref["scheduler"]
    assert torch.equal(state["rng"][0]["torch"], ref["rng"][0]["torch"])  # dropout drew the same masks


def test_request_stop_then_resume_equals_the_uninterrupted_run(tmp_path, reference):
    recipe_trainer(tmp_path, callbacks=[StopAt(7)]).fit()
    assert load_checkpoint(tmp_path)["step"] == 7  # epoch 1, batch 2

    lrs = LrRecorder()
    recipe_trainer(tmp_path, init_seed=1234, resume=True, callbacks=[lrs]).fit()
    assert min(lrs.lr) == 8
    assert_same_run(tmp_path, lrs.lr, reference)


KILLED_RUN = """
import sys
import torch

torch.set_num_threads(1)
sys.path.insert(0, {tests!r})
from test_resume import HangAt, recipe_trainer

recipe_trainer(sys.argv[1], callbacks=[HangAt(7, sys.argv[2])]).fit()
"""


def test_a_killed_process_resumes_to_the_uninterrupted_run(tmp_path, reference):
    run, marker = tmp_path / "run", tmp_path / "hanging"
    script = tmp_path / "killed_run.py"
    script.write_text(textwrap.dedent(KILLED_RUN.format(tests=str(Path(__file__).parent))))
    repo = str(Path(analysis.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    with open(tmp_path / "stderr.txt", "w") as stderr:
        proc = subprocess.Popen([sys.executable, str(script), str(run), str(marker)], env=env, stderr=stderr)
        try:
            deadline = time.monotonic() + 120
            while not marker.exists():
                assert proc.poll() is None, (tmp_path / "stderr.txt").read_text()
                assert time.monotonic() < deadline, "the run did not reach step 7 in 120 s"
                time.sleep(0.05)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert load_checkpoint(run)["step"] == 6  # epoch 1, batch 1: the last checkpoint before the kill
    assert read_metrics(run)["step"].max() == 7  # step 7 was logged; the resume cuts it

    lrs = LrRecorder()
    recipe_trainer(run, init_seed=1234, resume=True, callbacks=[lrs]).fit()
    assert min(lrs.lr) == 7
    assert_same_run(run, lrs.lr, reference)


def test_a_checkpoint_write_that_fails_midway_keeps_the_previous_one(tmp_path, monkeypatch, reference):
    real_save = torch.save
    calls = []

    def save_half_then_fail(obj, f, *args, **kwargs):
        """The first save succeeds; the second writes half of its bytes, then the disk is full."""
        calls.append(f)
        if len(calls) == 1:
            return real_save(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        Path(f).write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", save_half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        recipe_trainer(tmp_path).fit()
    monkeypatch.undo()
    assert len(calls) == 2  # the checkpoints of steps 3 and 6
    assert {p.name for p in tmp_path.iterdir()} == FILES  # no half-written temporary file is left
    state = load_checkpoint(tmp_path)
    assert state["step"] == CHECKPOINT_EVERY
    recipe_model().load_state_dict(state["model"])

    lrs = LrRecorder()
    recipe_trainer(tmp_path, init_seed=1234, resume=True, callbacks=[lrs]).fit()
    assert min(lrs.lr) == CHECKPOINT_EVERY + 1
    assert_same_run(tmp_path, lrs.lr, reference)
