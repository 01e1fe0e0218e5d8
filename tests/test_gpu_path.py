"""The GPU path, checked on the CPU (issue 19): the "auto" settings per device, no host read between logged
steps (a counter of every way a tensor reaches the host), the device-resident input pipeline and its disk store,
the foreach RMSProp, where a process trains under torchrun, agreement on resuming, determinism, sync BN, the
noisy-BN and transform_input constants built on the device, and the GPU check's CPU mode."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
import torch.distributed as dist
from torch import nn

import analysis
from analysis.callbacks import Callback
from analysis.data.synthetic import SyntheticShapes, store_key
from analysis.data.tensors import ImageTensors
from analysis.experiments.norm_variants import BatchNormNoise
from analysis.training import placement as placement_module
from analysis.training import trainer as trainer_module
from analysis.training.audit import HostReads, audit_steps
from analysis.training.checkpoint import load_checkpoint
from analysis.training.config import TrainConfig
from analysis.training.optim import RMSpropTF
from analysis.training.placement import placement, with_sync_bn
from analysis.training.sampling import DataSource, LoaderSource, TensorSource
from analysis.training.trainer import Trainer, TrainingDiverged
from inception_models import create_model, list_models, model_info

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(analysis.__file__).resolve().parents[1]


def tiny_googlenet() -> nn.Module:
    """GoogLeNet at 1/8 width with both aux heads: batch norm, dropout and three losses."""
    torch.manual_seed(0)
    return create_model("googlenet", num_classes=10, aux_logits=True, width_mult=0.125)


def synthetic(split: str, n: int) -> SyntheticShapes:
    return SyntheticShapes(n, 32, seed=0, split=split)


def recipe(**overrides) -> TrainConfig:
    """Inception-v3's recipe (RMSProp, clipping, label smoothing), logged every 5 steps, on the CPU."""
    values = dict(steps=10, batch_size=8, device="cpu", seed=1, log_every=5, progress=False, channels_last=True)
    return TrainConfig.preset("inception_v3", **{**values, **overrides})


# ----------------------------------------------------------------------------------------- auto settings
def test_auto_settings_are_decided_per_device():
    config = TrainConfig(steps=1)
    cuda = config.resolved("cuda")
    assert (cuda.amp, cuda.channels_last, cuda.cudnn_benchmark, cuda.pin_memory, cuda.data_on_device) == (
        "bf16", True, True, True, True)
    assert config.resolved("cuda", bf16_supported=False).amp is None  # no bf16 (V100, T4): fp32, no grad scaler
    for device in ("cpu", "mps"):
        cpu = config.resolved(device)
        assert (cpu.amp, cpu.channels_last, cpu.cudnn_benchmark, cpu.pin_memory) == (None, False, False, False)
    assert TrainConfig(steps=1, deterministic=True).resolved("cuda").cudnn_benchmark is False
    given = TrainConfig(steps=1, amp="fp16", channels_last=False, pin_memory=False).resolved("cuda")
    assert (given.amp, given.channels_last, given.pin_memory) == ("fp16", False, False)  # a given value stays
    assert config.amp == "auto"  # resolving returns a copy


@pytest.mark.parametrize("field, value, message", [
    ("channels_last", "yes", "channels_last='yes'"),
    ("amp", "int8", "amp='int8'"),
    ("sync_bn", "auto", "sync_bn='auto'"),
    ("num_workers", -1, "num_workers must be >= 0"),
])
def test_bad_speed_settings_are_named(field, value, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(steps=1, **{field: value}).validate()
    with pytest.raises(ValueError, match="deterministic=True with cudnn_benchmark=True"):
        TrainConfig(steps=1, deterministic=True, cudnn_benchmark=True).validate()


# ------------------------------------------------------------------------------------------ host reads
def test_no_host_read_between_logged_steps(tmp_path):
    """Inception-v3's recipe with clipping, aux heads, noisy BN, 8-bit images gathered by index: the steps that
    log, evaluate or checkpoint read the device, every other step reads nothing. (The aux-heads experiment's
    ``MainHeadLoss`` still reads its main loss every step: its owner's file.)"""
    noise = BatchNormNoise(seed=3)
    trainer = Trainer(tiny_googlenet(), recipe(steps=12, eval_every=6, checkpoint_every=4, out_dir=tmp_path),
                      synthetic("train", 40), synthetic("val", 16), callbacks=[noise])
    assert isinstance(trainer.train_source, TensorSource)
    with audit_steps(trainer) as per_step:
        trainer.fit()
    assert float(torch.ones(())) == 1.0 and "_train_step" not in vars(trainer)  # the audit undid its patches
    quiet = {step: n for step, n in per_step.items() if step % 4 and step % 5 and step % 6 and step != 12}
    assert set(quiet) == {1, 2, 3, 7, 9, 11} and set(quiet.values()) == {0}, per_step
    assert all(per_step[step] > 0 for step in (4, 5, 6, 8, 10, 12))  # the counter sees the reads that remain


def test_the_host_read_counter_counts_every_way_to_the_host():
    t = torch.arange(3.0)
    with HostReads() as reads:
        float(t[0]), int(t[1]), bool(t[2]), t.tolist(), t[0].item(), t.cpu(), t.numpy(), [0, 1][t.long()[1]]
    assert reads.count == 8
    float(t[0])
    assert reads.count == 8  # closed: nothing counts any more


def test_the_logged_row_has_the_step_and_the_mean_since_the_last_row():
    """log_every=5 logs the loss and accuracy of steps 5 and 10 as the every-step log does, and their means."""
    def history(log_every: int) -> pd.DataFrame:
        log = Trainer(tiny_googlenet(), recipe(log_every=log_every), synthetic("train", 40)).fit()
        return log[log["split"] == "train"].set_index("step")

    every, fifth = history(1), history(5)
    assert fifth.index.tolist() == [5, 10]
    for column in ("loss", "accuracy", "grad_norm", "lr"):
        assert fifth[column].tolist() == every.loc[[5, 10], column].tolist(), column
    assert fifth["loss_mean"].tolist() == pytest.approx([every.loc[1:5, "loss"].mean(), every.loc[6:10, "loss"].mean()],
                                                        rel=1e-12)
    assert fifth["accuracy_mean"].tolist() == pytest.approx(
        [every.loc[1:5, "accuracy"].mean(), every.loc[6:10, "accuracy"].mean()], rel=1e-12)


class PoisonAt(Callback):
    """Makes every gradient NaN at one step: the next step's loss is NaN."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_after_backward(self, trainer, batch, loss):
        if trainer.step + 1 == self.step:
            for p in trainer.model.parameters():
                if p.grad is not None:
                    p.grad.fill_(math.nan)


def test_a_nan_between_logged_steps_is_named_by_its_step_and_spares_the_checkpoint(tmp_path):
    trainer = Trainer(tiny_googlenet(), recipe(steps=20, log_every=10, checkpoint_every=4, out_dir=tmp_path),
                      synthetic("train", 40), callbacks=[PoisonAt(5)])
    with pytest.raises(TrainingDiverged, match="diverged at step 6: the loss is nan") as caught:
        trainer.fit()
    assert caught.value.step == 6  # found at the checkpoint of step 8, named by the first NaN loss
    assert load_checkpoint(tmp_path)["step"] == 4


# ---------------------------------------------------------------------------------------- input pipeline
def batches(source, **kw) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.clone(), y.clone()) for x, y in source.epoch_batches(12, 5, 2, 1, **kw)]


@pytest.mark.parametrize("rank", [0, 1])
def test_tensor_batches_equal_the_loader_batches(rank):
    """Gathered from 8-bit tensors by index, scaled per batch: the loader's batches bit for bit, for each DDP
    rank's share from a mid-epoch start, and the evaluation shard."""
    data = synthetic("train", 50)
    held, loaded = DataSource.of(data, "data"), LoaderSource.of(data, "data")
    assert isinstance(held, TensorSource) and held.inputs.dtype == torch.uint8
    kw = dict(rank=rank, world_size=2)
    for (x, y), (x_ref, y_ref) in zip(batches(held, **kw), batches(loaded, **kw), strict=True):
        assert torch.equal(x, x_ref) and torch.equal(y, y_ref)
    evaluated = list(held.eval_batches(7, **kw)), list(loaded.eval_batches(7, **kw))
    assert len(evaluated[0]) == len(evaluated[1]) == 4
    for (x, y), (x_ref, y_ref) in zip(*evaluated):
        assert torch.equal(x, x_ref) and torch.equal(y, y_ref)


def test_a_tensor_pair_is_gathered_where_it_lives():
    images, labels = torch.randn(20, 3, 8, 8), torch.arange(20) % 4
    source = DataSource.of((images, labels), "data").place(torch.device("cpu"), on_device=True, pin_memory=False)
    x, y = next(iter(source.epoch_batches(4, 0, 0, 0)))
    order = torch.randperm(20, generator=torch.Generator().manual_seed(trainer_module.seed_for(0, 0)))[:4]
    assert torch.equal(x, images[order]) and torch.equal(y, labels[order])
    soft = torch.rand(20, 4)  # soft targets: gathered as they are
    _, y = next(iter(DataSource.of((images, soft), "data").epoch_batches(4, 0, 0, 0)))
    assert torch.equal(y, soft[order])


def test_the_disk_store_renders_once_and_keys_every_image_parameter(tmp_path, monkeypatch):
    first = SyntheticShapes(12, 32, seed=4, split="val", store=tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [store_key(12, 32, 4, "val")]

    def no_render(self, indices):
        raise AssertionError("rendered again")

    monkeypatch.setattr(SyntheticShapes, "_render_uint8", no_render)
    again = SyntheticShapes(12, 32, seed=4, split="val", store=tmp_path)
    assert torch.equal(again.image_tensors().images, first.image_tensors().images)
    monkeypatch.undo()
    assert torch.equal(first.images(), SyntheticShapes(12, 32, seed=4, split="val").images())  # a fresh render
    base = store_key(12, 32, 4, "val")
    assert len({base, store_key(13, 32, 4, "val"), store_key(12, 33, 4, "val"), store_key(12, 32, 5, "val"),
                store_key(12, 32, 4, "test"), store_key(12, 32, 4, "val", "hard")}) == 6
    assert store_key(12, 32, 4, "train", "label_noise=0.2") == store_key(12, 32, 4, "train")  # labels only

    (tmp_path / base).write_bytes(b"torn")  # a damaged file is rendered again and replaced
    assert torch.equal(SyntheticShapes(12, 32, seed=4, split="val", store=tmp_path).images(), first.images())
    assert torch.load(tmp_path / base, weights_only=True).dtype == torch.uint8


# ------------------------------------------------------------------------------------------- optimiser
def test_foreach_rmsprop_equals_the_loop_bit_for_bit():
    """Forty steps of the foreach update equal the per-tensor loop's, with and without momentum and weight decay,
    over two dtypes (grouped separately) and a parameter without a gradient."""
    for momentum, weight_decay in ((0.9, 4e-5), (0.0, 0.0)):
        g = torch.Generator().manual_seed(0)
        shapes = [(8, 3, 3, 3), (8,), (10, 8), (5,)]
        start = [torch.randn(s, generator=g, dtype=torch.float64 if i == 3 else torch.float32)
                 for i, s in enumerate(shapes)]
        grads = [[torch.randn(t.shape, generator=g, dtype=t.dtype) for t in start] for _ in range(40)]
        runs = []
        for foreach in (False, True):
            params = [t.clone().requires_grad_() for t in start] + [torch.zeros(3, requires_grad=True)]
            opt = RMSpropTF(params, lr=0.045, momentum=momentum, weight_decay=weight_decay, foreach=foreach)
            for step_grads in grads:
                for p, grad in zip(params, step_grads):
                    p.grad = grad.clone()
                opt.step()
            runs.append((params, opt.state_dict()["state"]))
        (loop, loop_state), (fused, fused_state) = runs
        assert all(torch.equal(a, b) for a, b in zip(loop, fused))
        assert loop_state.keys() == fused_state.keys() == {0, 1, 2, 3}  # the gradient-less one has no state
        for index, buffers in loop_state.items():
            assert all(torch.equal(buffers[k], fused_state[index][k]) for k in ("square_avg", "momentum_buffer"))
        assert not torch.equal(loop[0], start[0])


def test_foreach_is_the_default_on_cuda_only(monkeypatch):
    calls = []
    monkeypatch.setattr("analysis.training.optim._foreach_step", lambda *a: calls.append("foreach"))
    monkeypatch.setattr("analysis.training.optim._loop_step", lambda *a: calls.append("loop"))
    p = torch.zeros(2, requires_grad=True)
    p.grad = torch.ones(2)
    RMSpropTF([p]).step()
    RMSpropTF([p], foreach=True).step()
    assert calls == ["loop", "foreach"]


# ----------------------------------------------------------------------------------- placement and DDP
@pytest.mark.parametrize("device, world, local_rank, cuda, expected", [
    ("auto", 1, 0, True, ("cuda:0", None)),
    ("auto", 1, 0, False, ("cpu", None)),
    ("cuda:1", 1, 0, True, ("cuda:1", None)),
    ("cuda:0", 4, 3, True, ("cuda:3", "nccl")),  # under torchrun the local rank picks the GPU, over NCCL
    ("cuda", 2, 1, True, ("cuda:1", "nccl")),
    ("auto", 2, 1, True, ("cuda:1", "nccl")),
    ("auto", 2, 1, False, ("cpu", "gloo")),
    ("cpu", 2, 1, True, ("cpu", "gloo")),
])
def test_where_a_process_trains(device, world, local_rank, cuda, expected):
    where, backend = placement(device, world_size=world, local_rank=local_rank, cuda_available=cuda,
                               mps_available=False)
    assert (str(where), backend) == expected


def test_placement_refuses_what_cannot_run():
    with pytest.raises(ValueError, match="no CUDA device"):
        placement("cuda:0", world_size=2, local_rank=0, cuda_available=False, mps_available=False)
    with pytest.raises(ValueError, match="DDP does not run on MPS"):
        placement("mps", world_size=2, local_rank=0, cuda_available=False, mps_available=True)


def test_cuda_n_under_torchrun_joins_nccl_on_the_local_rank(monkeypatch):
    """device='cuda:0' in every process of a torchrun job: each joins NCCL on its own local rank's GPU."""
    calls = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(("set_device", str(d))))
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend: calls.append(("init", backend)))
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(placement_module, "_OWNED_GROUP", True)  # no exit hook from a test
    fake = SimpleNamespace(_owns_process_group=False)
    rank, world, device = Trainer._join_process_group(fake, "cuda:0")  # type: ignore[arg-type]
    assert (rank, world, str(device)) == (1, 2, "cuda:1")
    assert calls == [("set_device", "cuda:1"), ("init", "nccl")] and fake._owns_process_group


@pytest.mark.parametrize("rank0_has, here, expected", [
    (True, True, True), (False, False, False),
    (False, True, False),  # a stale file on this node: rank 0 decides
    (True, False, FileNotFoundError),  # rank 0 resumes, this node cannot see the file
])
def test_every_rank_takes_rank_0s_answer_on_resuming(monkeypatch, tmp_path, rank0_has, here, expected):
    path = tmp_path / "checkpoint.pt"
    if here:
        path.write_bytes(b"x")

    def broadcast(objects, src):
        assert src == 0
        objects[0] = rank0_has

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "broadcast_object_list", broadcast)
    monkeypatch.setattr(dist, "all_reduce", lambda tensor: None)  # this rank's view is the sum
    fake = SimpleNamespace(config=SimpleNamespace(resume=True), checkpoint_path=path, world_size=2, rank=1,
                           device=torch.device("cpu"))
    if expected is FileNotFoundError:
        with pytest.raises(FileNotFoundError, match="shares"):
            Trainer._checkpoint_to_resume(fake)  # type: ignore[arg-type]
    else:
        assert Trainer._checkpoint_to_resume(fake) is expected  # type: ignore[arg-type]


def test_sync_bn_converts_under_ddp_and_keeps_the_state_dict():
    model = tiny_googlenet()
    before = model.state_dict()
    assert with_sync_bn(model, world_size=1, device=torch.device("cuda", 0)) is model  # nothing to synchronise
    synced = with_sync_bn(model, world_size=2, device=torch.device("cuda", 0))
    layers = [m for m in synced.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert layers and all(isinstance(m, nn.SyncBatchNorm) for m in layers)
    after = synced.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())
    with pytest.raises(ValueError, match="sync_bn=True needs CUDA"):
        with_sync_bn(tiny_googlenet(), world_size=2, device=torch.device("cpu"))


# ----------------------------------------------------------------------------------------- determinism
def test_deterministic_sets_the_flags_and_close_restores_them(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
              torch.backends.cudnn.benchmark)
    with Trainer(tiny_googlenet(), recipe(deterministic=True, steps=2), synthetic("train", 16)) as trainer:
        assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
        assert not torch.backends.cudnn.benchmark and os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        trainer.fit()  # no op of the recipe lacks a deterministic kernel on the CPU
    assert (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
            torch.backends.cudnn.benchmark) == before
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ


# Backward nodes whose CUDA kernels use atomics: torch.use_deterministic_algorithms(True) refuses them.
NONDETERMINISTIC_ON_CUDA = ("AdaptiveAvgPool2DBackward", "AdaptiveAvgPool3DBackward", "AdaptiveMaxPool2DBackward",
                            "AvgPool3DBackward", "MaxPool3DWithIndicesBackward", "FractionalMaxPool",
                            "MaxUnpool", "UpsampleLinear", "UpsampleBilinear", "UpsampleBicubic", "ReflectionPad",
                            "NllLoss2DBackward", "GridSampler", "EmbeddingBagBackward")


def backward_nodes(tensor: torch.Tensor) -> set[str]:
    seen, stack, names = set(), [tensor.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return names


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_every_zoo_model_trains_with_deterministic_cuda_kernels(memory_format):
    """The global average pool is AdaptiveAvgPool2d(1), which PyTorch runs as a mean over H and W: no backward
    of the zoo, aux heads included, is one the deterministic mode refuses on CUDA, but for one known exception:
    googlenet_paper's LocalResponseNorm, which PyTorch computes with avg_pool3d (a deterministic LRN, a sum of
    shifted slices, belongs in googlenet.py)."""
    refused = {}
    for name in list_models():
        info = model_info(name)
        knobs = {"num_classes": 10}
        knobs.update({k: v for k, v in (("aux_logits", True), ("width_mult", 0.125)) if k in info.knobs})
        torch.manual_seed(0)
        model = create_model(name, **knobs).train().to(memory_format=memory_format)
        size = 299 if name.startswith("inception_v3") else max(info.min_input_size, 32)  # its aux head: 299
        x = torch.randn(2, 3, size, size).contiguous(memory_format=memory_format)
        out = model(x)
        logits = out if isinstance(out, torch.Tensor) else out[0]
        loss = nn.functional.cross_entropy(logits, torch.tensor([0, 1]), label_smoothing=0.1)
        nodes = backward_nodes(loss)
        assert "MeanBackward1" in nodes, name
        if offenders := {n for n in nodes if n.startswith(NONDETERMINISTIC_ON_CUDA)}:
            refused[name] = offenders
    assert refused == {"googlenet_paper": {"AvgPool3DBackward0"}}


# ------------------------------------------------------------------------------ constants on the device
def test_noisy_bn_draws_its_noise_on_the_activations_device(monkeypatch):
    devices = []
    x = torch.randn(2, 3, 8, 8)
    for draw in ("rand", "randn"):
        real = getattr(torch, draw)

        def recorded(*args, _real=real, **kwargs):
            devices.append(kwargs.get("device"))
            return _real(*args, **kwargs)

        monkeypatch.setattr(torch, draw, recorded)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)).train()
    noise = BatchNormNoise(seed=1).attach(model)
    out = model(x)
    monkeypatch.undo()
    assert devices == [torch.device("cpu")] * 8  # 4 draws per BN layer, each made on the output's device
    noise.detach()
    assert not torch.equal(out, model(x))


def test_transform_input_builds_its_constants_once(monkeypatch):
    """The constants are buffers (moved with the model, kept out of the state dict); a forward builds none."""
    torch.manual_seed(0)
    model = create_model("googlenet", num_classes=10, width_mult=0.125, transform_input=True).eval()
    plain = create_model("googlenet", num_classes=10, width_mult=0.125)
    assert model.state_dict().keys() == plain.state_dict().keys()
    x = torch.randn(2, 3, 64, 64)
    built = []
    for name in ("new_tensor", "tensor", "as_tensor"):
        owner = torch.Tensor if name == "new_tensor" else torch
        real = getattr(owner, name)
        monkeypatch.setattr(owner, name, lambda *a, _real=real, **k: built.append(1) or _real(*a, **k))
    transformed = model._transform_input(x)
    monkeypatch.undo()
    assert not built
    std, mean = torch.tensor([0.229, 0.224, 0.225]), torch.tensor([0.485, 0.456, 0.406])
    expected = x * (std / 0.5).view(1, 3, 1, 1) + ((mean - 0.5) / 0.5).view(1, 3, 1, 1)
    assert torch.allclose(transformed, expected, atol=1e-6)
    assert model.to(torch.float64)._transform_input(x.double()).dtype == torch.float64


# ---------------------------------------------------------------------------------------- the GPU check
@pytest.mark.slow  # ~90 s on 2 idle cores (~120 CPU-s), minutes on a loaded machine: every section, tiny inputs
def test_the_gpu_check_runs_on_the_cpu(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--tiny",
                           "--out", str(tmp_path)], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    csv, md = tmp_path / "gpu-cpu.csv", tmp_path / "gpu-cpu.md"
    table = pd.read_csv(csv)
    assert not table[table["status"] != "ok"].to_dict("records"), "a section failed"
    sections = set(table["section"])
    assert {"environment", "throughput", "sync_audit", "resume", "determinism", "experiments"} <= sections
    speeds = table[table["section"] == "throughput"]
    assert {"fp32", "bf16+channels_last", "bf16", "bf16+channels_last+compile"} <= set(speeds["variant"])
    assert (speeds["ours_img_per_s"] > 0).all()
    paired = speeds[speeds["model"] != "small_inception"]  # small_inception has no reference build: no ratio
    assert len(paired) == 4 and (paired["ratio"] > 0).all()
    assert table.loc[table["section"] == "resume", "value"].astype(str).tolist() == ["bit-exact"]
    trained = table[table["section"] == "experiments"].set_index("model")
    assert set(trained.index) == {"factorization_grid", "dead_units", "smoothness", "residual_speedup",
                                  "label_smoothing", "aux_heads", "xception_vs_v3", "bn_speedup"}
    assert (trained["value"].astype(float) >= 2).all()  # every shrunk full config ran two or more points
    assert "MFU" in md.read_text() and json.loads(table.loc[table["section"] == "environment", "detail"].iloc[0])


# ------------------------------------------------------------------------------ CPU results unchanged
# Digests of three few-step CPU runs (the logged split/step/loss/accuracy/lr/grad_norm and every weight and
# buffer), recorded with main's code before the GPU path (commit e196796: per-sample loader, per-tensor RMSProp,
# float() reads every step) under this torch. The GPU path must not move a CPU result by one bit: the committed
# reports were produced by that code.
PINNED_TORCH = "2.14.1"
PINNED = {"sgd_tensors": "d462398809e7f272", "rmsprop_dataset_bnnoise": "582eb72eb2a4ea72",
          "v3_transform_input": "3621113937610a14", "train_point_small": "7f815c0edcc80047",
          "train_point_googlenet_aux": "e854d103d0ababea"}


def _run_digest(history: list[dict], model: nn.Module, *extra: dict) -> str:
    import hashlib

    sha = hashlib.sha256()
    for row in history:
        sha.update(json.dumps({k: row.get(k) for k in ("split", "step", "loss", "accuracy", "lr", "grad_norm")},
                              sort_keys=True).encode())
    for key, value in model.state_dict().items():
        sha.update(key.encode())
        sha.update(value.detach().cpu().contiguous().numpy().tobytes())
    for values in extra:
        sha.update(json.dumps(values, sort_keys=True).encode())
    return sha.hexdigest()[:16]


@pytest.mark.skipif(torch.__version__.split("+")[0] != PINNED_TORCH, reason=f"digests recorded under torch {PINNED_TORCH}")
def test_cpu_training_is_bit_identical_to_the_code_before_the_gpu_path(tmp_path):
    from analysis.data.synthetic import make_synthetic
    from analysis.training.trainer import seed_everything

    got = {}
    train, val = make_synthetic("train", 48, 32, 0).tensors(), make_synthetic("val", 16, 32, 0).tensors()
    seed_everything(0)
    config = TrainConfig(steps=9, batch_size=8, device="cpu", lr=0.05, log_every=2, eval_every=4, progress=False)
    with Trainer(create_model("small_inception", num_classes=10), config, train, val) as trainer:
        trainer.fit()
        got["sgd_tensors"] = _run_digest(trainer.history, trainer.model)

    seed_everything(0)
    config = TrainConfig.preset("inception_v3", steps=9, batch_size=8, device="cpu", seed=1, log_every=3,
                                eval_every=4, checkpoint_every=5, progress=False, out_dir=tmp_path)
    with Trainer(create_model("googlenet", num_classes=10, aux_logits=True, width_mult=0.125), config,
                 synthetic("train", 40), synthetic("val", 16), callbacks=[BatchNormNoise(seed=3)]) as trainer:
        assert isinstance(trainer.train_source, TensorSource)  # the new path, against main's per-sample loader
        trainer.fit()
        got["rmsprop_dataset_bnnoise"] = _run_digest(trainer.history, trainer.model)

    seed_everything(0)
    model = create_model("inception_v3", num_classes=10, aux_logits=False, width_mult=0.125, transform_input=True)
    config = TrainConfig(steps=2, batch_size=4, device="cpu", log_every=1, progress=False)
    with Trainer(model, config, make_synthetic("train", 8, 75, 0).tensors()) as trainer:
        trainer.fit()
        got["v3_transform_input"] = _run_digest(trainer.history, trainer.model)

    # The experiments' runner: 8-bit pixels to the trainer now, float tensors before.
    from analysis.experiments.runner import train_point

    point = dict(n_train=24, n_val=10, image_size=32, steps=5, batch_size=8, device="cpu", log_every=2, eval_every=3,
                 seed=2, lr=0.05)
    outcome = train_point(point, "small_inception")
    assert isinstance(outcome.trainer.train_source, TensorSource)
    assert outcome.trainer.train_source.inputs.dtype == torch.uint8
    got["train_point_small"] = _run_digest(outcome.trainer.history, outcome.trainer.model, outcome.trainer.evaluate())
    point = dict(n_train=24, n_val=10, image_size=40, steps=4, batch_size=4, device="cpu", log_every=1, seed=1,
                 data_seed=3, optimizer="rmsprop", lr=0.01, grad_clip=2.0, label_smoothing=0.1)
    outcome = train_point(point, "googlenet", model_kwargs=dict(aux_logits=True, width_mult=0.125))
    got["train_point_googlenet_aux"] = _run_digest(outcome.trainer.history, outcome.trainer.model,
                                                   outcome.trainer.evaluate())
    assert got == PINNED


# ----------------------------------------------------------------------------------- the full tier's knobs
def test_every_full_config_carries_the_gpu_speed_knobs_and_they_resolve_per_device():
    """The speed knobs are TrainConfig keys in every experiment's configs (through GPU_FULL and CPU_QUICK), "auto":
    bf16 + channels_last + cuDNN benchmarking + data on the GPU on CUDA (the full tier), all off on the CPU."""
    from analysis.experiments import EXPERIMENTS, load_experiment
    from analysis.experiments.runner import SPEED, TRAIN_KEYS

    assert set(SPEED) <= set(TRAIN_KEYS)
    for name in EXPERIMENTS:
        configs = load_experiment(name).CONFIGS
        for tier in ("quick", "full"):
            assert {k: configs[tier][k] for k in SPEED} == SPEED, (name, tier)
    knobs = TrainConfig(steps=1, **SPEED)
    cuda, cpu = knobs.resolved("cuda"), knobs.resolved("cpu")
    assert (cuda.amp, cuda.channels_last, cuda.cudnn_benchmark, cuda.data_on_device) == ("bf16", True, True, True)
    assert (cpu.amp, cpu.channels_last, cpu.cudnn_benchmark, cpu.compile) == (None, False, False, False)


def test_train_point_hands_a_points_speed_knobs_to_the_trainer():
    from analysis.experiments.runner import SPEED, train_point

    point = dict(n_train=16, n_val=8, image_size=32, steps=1, batch_size=8, device="cpu", log_every=1, seed=0,
                 **{**SPEED, "channels_last": True})
    outcome = train_point(point, "small_inception")
    assert outcome.trainer.config.channels_last is True and outcome.trainer.config.amp is None
    assert outcome.trainer.memory_format == torch.channels_last


def test_a_rows_peak_is_that_of_the_arithmetic_it_ran_in(monkeypatch):
    """peak_share / MFU: an fp32 row (TF32 convolutions, cuDNN's default) over the TF32 peak, not the bf16 one;
    an H100 PCIe is not taken for an SXM; a GPU without TF32 falls back to fp32, one without bf16 has none."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from peaks import peak_arithmetic, peak_tflops

    assert peak_arithmetic(None, cudnn_tf32=True) == "tf32" and peak_arithmetic(None, cudnn_tf32=False) == "fp32"
    assert peak_arithmetic("bf16") == "bf16"
    assert peak_tflops("NVIDIA H100 80GB HBM3", "tf32") == 494.7  # half the dense bf16 peak
    assert peak_tflops("NVIDIA H100 80GB HBM3", "bf16") == 989.4
    assert peak_tflops("NVIDIA H100 PCIe", "bf16") == 756.0
    assert peak_tflops("Tesla V100-SXM2-16GB", "tf32") == 15.7
    assert math.isnan(peak_tflops("Tesla T4", "bf16")) and math.isnan(peak_tflops("Some GPU", "bf16"))


def test_the_runner_renders_a_set_once_into_the_data_cache(monkeypatch, tmp_path):
    """With INCEPTION_LAB_DATA_CACHE set, a set is rendered once into that folder and read back by a later process
    (here: after the in-process cache is cleared); the float tensors are the pixels scaled, as make_synthetic's."""
    from analysis.data.synthetic import make_synthetic
    from analysis.experiments import runner

    monkeypatch.setenv(runner.DATA_CACHE_ENV, str(tmp_path))
    runner._pixels.cache_clear()
    runner._tensors.cache_clear()
    try:
        first = runner.pixels("val", 12, 32, 5)
        (stored,) = tmp_path.iterdir()
        mtime = stored.stat().st_mtime_ns
        runner._pixels.cache_clear()
        again = runner.pixels("val", 12, 32, 5)
        assert stored.stat().st_mtime_ns == mtime and torch.equal(again.images, first.images)
        images, labels = runner.tensors("val", 12, 32, 5)
        assert runner.tensors("val", 12, 32, 5, "default")[0] is images  # one entry whatever the arguments given
        assert runner._pixels.cache_info().misses == 1
        expected = make_synthetic("val", 12, 32, 5).tensors()
        assert torch.equal(images, expected[0]) and torch.equal(labels, expected[1])
    finally:
        runner._pixels.cache_clear()
        runner._tensors.cache_clear()


def test_a_shrunk_full_config_keeps_the_network_and_recipe_and_cuts_the_budget():
    """On a GPU the check runs each experiment's full network and recipe (what could fail there: memory, bf16,
    channels_last, the isolated worker processes) for two steps of one seed; --tiny narrows the network too."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from shrunk_experiments import EXPERIMENTS, shrink
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    import importlib

    for name in EXPERIMENTS:
        full = importlib.import_module(f"analysis.experiments.{name}").CONFIGS["full"]
        gpu = shrink(name, full, tiny=False, device="cuda")
        kept = ("model", "width_mult", "image_size", "optimizer", "schedule", "difficulty", "amp", "channels_last")
        assert {k: gpu.get(k) for k in kept} == {k: full.get(k) for k in kept}, name
        assert (gpu["steps"], gpu["seeds"], len(gpu["lrs"]), gpu["isolate"]) == (2, 1, 1, True), name
        tiny = shrink(name, full, tiny=True, device="cpu")
        assert tiny["isolate"] is False and tiny["threads"] == 1 and tiny.get("image_size", 32) <= full.get("image_size", 32), name
