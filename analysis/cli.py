"""The ``inception-lab`` command line.

Every command that prints a table takes the same ``--format`` option (table, csv, json, markdown, latex),
rendered by :mod:`analysis.report.tables`. Bad input ends in one clear line on stderr and exit code 2, never a
stack trace.
"""

from __future__ import annotations

import ast
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(
    help="Inception Lab: the Inception family of CNNs, measured against their papers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class Format(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"
    markdown = "markdown"
    latex = "latex"


FormatOption = Annotated[Format, typer.Option("--format", "-f", help="Output format of the table.")]


def _emit(df, fmt: Format, *, title: str | None = None, notes=()) -> None:
    from analysis.report.tables import render

    typer.echo(render(df, fmt.value, title=title, notes=notes), nl=False)


KnobOption = Annotated[
    Optional[list[str]],
    typer.Option("--knob", "-k", help="A model knob as NAME=VALUE (repeatable), e.g. -k width_mult=0.5 -k norm=none."),
]


def parse_knobs(items: list[str] | None) -> dict[str, object]:
    """``["width_mult=0.5", "norm=none"]`` -> ``{"width_mult": 0.5, "norm": "none"}`` (Python literals, else str)."""
    knobs: dict[str, object] = {}
    for item in items or []:
        name, sep, text = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"--knob {item!r} is not NAME=VALUE (e.g. --knob width_mult=0.5)")
        try:
            knobs[name.strip()] = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            knobs[name.strip()] = text.strip()
    return knobs


def parse_range(text: str) -> list[int]:
    """``"8-35"`` -> 8..35, ``"8,12,17"`` -> those; a clear error otherwise."""
    try:
        if "-" in text:
            lo, hi = (int(v) for v in text.split("-", 1))
            if lo > hi:
                raise ValueError
            return list(range(lo, hi + 1))
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{text!r} is not a range like 8-35 or a list like 8,12,17") from None


@app.command()
def models(fmt: FormatOption = Format.table) -> None:
    """The registered models: paper, year, input sizes, counted parameters and the reference count."""
    from analysis.instruments.zoo import zoo_table

    table = zoo_table()
    notes = []
    if fmt in (Format.table, Format.markdown, Format.latex):
        table = table.drop(columns=["reference"])
        notes = ["Where each reference count comes from: `inception-lab models --format csv` (column reference)."]
    _emit(table, fmt, title="Inception Lab model zoo (default knobs, counted parameters vs reference)", notes=notes)


class GroupBy(str, Enum):
    module = "module"
    block = "block"
    stage = "stage"
    grid = "grid"


@app.command()
def summary(
    model: Annotated[str, typer.Argument(help="A registered model name (see `inception-lab models`).")],
    input_size: Annotated[Optional[int], typer.Option("--input", help="Input side in pixels (default: native).")] = None,
    by: Annotated[GroupBy, typer.Option("--by", help="Rows per module, block, stage or output grid.")] = GroupBy.stage,
    aux: Annotated[bool, typer.Option("--aux/--no-aux", help="Count the aux heads' MACs (training-mode path).")] = False,
    knob: KnobOption = None,
    fmt: FormatOption = Format.table,
) -> None:
    """Parameters and MACs (fvcore) of one model per module, block, stage or grid, with the totals."""
    from analysis.instruments.counting import count_model, create_model_for_counting, summarize, table_notes
    from inception_models import model_info

    info = model_info(model)
    size = input_size or info.input_size
    counts = count_model(create_model_for_counting(model, **parse_knobs(knob)), input_size=size, aux_macs=aux)
    _emit(summarize(counts, by=by.value, with_total=True), fmt, title=f"{model} at {size}x{size}, by {by.value}",
          notes=table_notes(counts))


@app.command()
def factorize(
    grids: Annotated[str, typer.Option("--grids", help="Grid sizes, a range 8-35 or a list 8,17,35.")] = "8-35",
    channels: Annotated[int, typer.Option("--channels", help="Channel width in and out of each conv.")] = 192,
    whole_model: Annotated[bool, typer.Option("--whole-model", help="Instead: each model with its factorization undone.")] = False,
    fmt: FormatOption = Format.table,
) -> None:
    """Factorization study: 5x5 vs two 3x3 and n x n vs 1 x n + n x 1, measured with fvcore at each grid size."""
    from analysis.instruments.counting import MAC_CONVENTION
    from analysis.instruments.factorization import factorization_study, undo_factorization_table

    if whole_model:
        _emit(undo_factorization_table(), fmt, title="Undoing the factorizations in whole models",
              notes=[MAC_CONVENTION])
        return
    study = factorization_study(parse_range(grids), channels)
    _emit(study, fmt, title=f"Factorized vs full convolutions at {channels} channels",
          notes=[MAC_CONVENTION, "ratio = factorized cost / full cost (closed forms: 18/25 for 5x5, 2/n for n x n)."])


@app.command()
def train(
    model: Annotated[str, typer.Argument(help="A registered model name.")],
    data: Annotated[str, typer.Option(help="synthetic[:DIFFICULTY] (e.g. synthetic:hard, synthetic:k100) | cifar10:PATH | imagefolder:PATH")] = "synthetic",
    steps: Annotated[Optional[int], typer.Option(help="Training steps (or give --epochs).")] = None,
    epochs: Annotated[Optional[float], typer.Option(help="Training epochs.")] = None,
    out: Annotated[Path, typer.Option(help="Run folder: metrics.jsonl, config.json, checkpoint.pt.")] = Path("runs/train"),
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out.")] = False,
    preset: Annotated[Optional[str], typer.Option(help="A paper's recipe: googlenet, inception_v3, inception_v4.")] = None,
    optimizer: Annotated[Optional[str], typer.Option(help="sgd | rmsprop")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Learning rate.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Global batch size.")] = None,
    image_size: Annotated[Optional[int], typer.Option(help="Input side (default: the model's native size).")] = None,
    n_train: Annotated[Optional[int], typer.Option(help="Synthetic training samples.")] = None,
    n_val: Annotated[Optional[int], typer.Option(help="Synthetic validation samples.")] = None,
    label_smoothing: Annotated[Optional[float], typer.Option(help="Label smoothing epsilon (0.1 in Inception-v3).")] = None,
    aux_weight: Annotated[Optional[float], typer.Option(help="Weight of each auxiliary loss (0.3 in GoogLeNet).")] = None,
    grad_clip: Annotated[Optional[float], typer.Option(help="Clip the gradient norm to this value.")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N | mps")] = "auto",
    amp: Annotated[str, typer.Option(help="auto (bf16 on CUDA, off elsewhere) | bf16 | fp16 (with a grad scaler) | off")] = "auto",
    channels_last: Annotated[Optional[bool], typer.Option("--channels-last/--no-channels-last", help="Default: on CUDA only.")] = None,
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile the model.")] = False,
    num_workers: Annotated[int, typer.Option(help="Loader worker processes (data sets not held as tensors).")] = 0,
    deterministic: Annotated[bool, typer.Option("--deterministic", help="Bit-reproducible kernels (GPU resume bit for bit).")] = False,
    sync_bn: Annotated[bool, typer.Option("--sync-bn", help="Under DDP on CUDA: BN statistics over the global batch.")] = False,
    data_cache: Annotated[Optional[Path], typer.Option(help="Folder keeping rendered synthetic sets on disk for later runs.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of initialisation and data order.")] = 0,
    eval_every: Annotated[Optional[int], typer.Option(help="Evaluate every N steps (and at the end).")] = None,
    checkpoint_every: Annotated[Optional[int], typer.Option(help="Checkpoint every N steps.")] = None,
    knob: KnobOption = None,
    fmt: FormatOption = Format.table,
) -> None:
    """Train a model (any device, AMP, DDP under torchrun); prints the last logged metrics."""
    from analysis.data.spec import build_dataset
    from analysis.training.config import TrainConfig
    from analysis.training.trainer import Trainer, seed_everything
    from inception_models import create_model, model_info

    knobs = parse_knobs(knob)
    info = model_info(model)
    size = info.input_size if image_size is None else image_size
    train_set = build_dataset(data, "train", size, n=n_train, store=data_cache)
    val_set = build_dataset(data, "val", size, n=n_val, store=data_cache)
    num_classes = getattr(train_set, "num_classes", None)
    if num_classes is not None and "num_classes" in info.knobs:
        knobs.setdefault("num_classes", int(num_classes))
    # Options given explicitly override the preset's recipe; the others keep the preset's (or TrainConfig's) values.
    recipe = {k: v for k, v in dict(optimizer=optimizer, lr=lr, batch_size=batch_size, label_smoothing=label_smoothing,
                                    aux_weight=aux_weight, grad_clip=grad_clip).items() if v is not None}
    run = dict(model=model, model_kwargs=knobs, data=data, steps=steps, epochs=epochs, out_dir=out, resume=resume,
               device=device, amp=None if amp.lower() in ("off", "none", "fp32") else amp, compile=compile,
               channels_last="auto" if channels_last is None else channels_last, num_workers=num_workers,
               deterministic=deterministic, sync_bn=sync_bn, seed=seed, eval_every=eval_every,
               checkpoint_every=checkpoint_every)
    config = TrainConfig.preset(preset, **run, **recipe) if preset else TrainConfig(**run, **recipe)
    config.validate()
    seed_everything(seed)  # before building, so the seed decides the initialisation
    log = Trainer(create_model(model, **knobs), config, train_set, val_set).fit()
    _emit(log.tail(5), fmt, title=f"{model}: last logged steps (full log: {out}/metrics.jsonl)")


class BNMode(str, Enum):
    train = "train"
    eval = "eval"


@app.command("dead-units")
def dead_units(
    model: Annotated[str, typer.Argument(help="A registered model name.")],
    weights: Annotated[Optional[Path], typer.Option(help="A local weight file (ours, torchvision or timm).")] = None,
    checkpoint: Annotated[Optional[Path], typer.Option(help="A checkpoint.pt written by `inception-lab train`.")] = None,
    data: Annotated[str, typer.Option(help="synthetic[:DIFFICULTY] (e.g. synthetic:hard, synthetic:k100) | cifar10:PATH | imagefolder:PATH")] = "synthetic",
    batches: Annotated[int, typer.Option(help="Number of batches to watch.")] = 4,
    batch_size: Annotated[int, typer.Option(help="Samples per batch.")] = 16,
    image_size: Annotated[Optional[int], typer.Option(help="Input side (default: the model's native size).")] = None,
    mode: Annotated[BNMode, typer.Option(help="BN mode of the forwards: running (eval) or batch (train) statistics.")] = BNMode.eval,
    all_layers: Annotated[bool, typer.Option("--all-layers", help="Every activation, not only the pre-pool layer.")] = False,
    knob: KnobOption = None,
    fmt: FormatOption = Format.table,
) -> None:
    """Dead channels (never positive on any sample) of the layer before average pooling, or of every layer."""
    from analysis.data.spec import build_dataset
    from analysis.instruments.activations import PREPOOL
    from analysis.instruments.dead_units import find_dead_units
    from analysis.training.checkpoint import load_checkpoint
    from analysis.training.sampling import make_loader
    from inception_models import create_model, model_info

    info = model_info(model)
    size = image_size or info.input_size
    dataset = build_dataset(data, "val", size, n=batches * batch_size)
    knobs = parse_knobs(knob)
    if "num_classes" not in knobs and weights is None:
        knobs["num_classes"] = int(getattr(dataset, "num_classes", 1000))
    net = create_model(model, weights=weights, **knobs) if weights else create_model(model, **knobs)
    if checkpoint is not None:
        net.load_state_dict(load_checkpoint(checkpoint)["model"])
    loader = make_loader(dataset, batch_size)
    result = find_dead_units(net, loader, layers=None if all_layers else PREPOOL, mode=mode.value, max_batches=batches)
    _emit(result, fmt, title=f"{model}: dead units ({mode.value}-mode BN, {int(result['samples'].max())} samples)",
          notes=["dead = never > 0 at any position of any sample seen"])


@app.command()
def experiment(
    name: Annotated[str, typer.Argument(help="An experiment (see analysis/experiments).")],
    config: Annotated[str, typer.Option(help="quick (a smoke test, minutes) | standard (2 CPU cores, <= 20 min, decides the claim) | full (a GPU or a cluster)")] = "quick",
    seed: Annotated[int, typer.Option(help="Seed of the whole experiment.")] = 0,
    results_dir: Annotated[Optional[Path], typer.Option(help="Resumable results folder (default: runs/experiments/NAME/...).")] = None,
    fmt: FormatOption = Format.table,
) -> None:
    """Run one of the papers' claims as an experiment (resumable); prints its results table."""
    from analysis.experiments import load_experiment, resolve_config
    from analysis.experiments.runner import default_results_dir

    module = load_experiment(name)
    cfg = resolve_config(module, config)  # an unknown config is a ValueError naming the known ones
    if "seed" in cfg:
        cfg["seed"] = seed
    folder = results_dir or default_results_dir(name, config, seed)
    _emit(module.run(cfg, results_dir=folder), fmt, title=f"{name} ({config}, seed {seed}); results in {folder}")


@app.command()
def smoothness(
    full: Annotated[bool, typer.Option("--full/--quick", help="Full (a GPU) or quick (2 CPU cores, minutes).")] = False,
    model: Annotated[str, typer.Option(help="A model with norm and width_mult knobs.")] = "small_inception",
    image_size: Annotated[Optional[int], typer.Option(help="Input side (default: the config's, 32).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the experiment.")] = 0,
    results_dir: Annotated[Optional[Path], typer.Option(help="Resumable results folder.")] = None,
    fmt: FormatOption = Format.table,
) -> None:
    """Santurkar et al.'s probes along training, BN vs no BN: one row per variant and probed step."""
    from analysis.experiments import load_experiment, resolve_config
    from analysis.experiments.runner import default_results_dir

    module = load_experiment("smoothness")
    mode = "full" if full else "quick"
    overrides: dict[str, object] = {"seed": seed, "model": model}
    if image_size is not None:
        overrides["image_size"] = image_size
    frame = module.run(resolve_config(module, mode, **overrides),
                       results_dir=results_dir or default_results_dir(f"smoothness-{model}", mode, seed))
    probes = module.probe_table(frame)
    _emit(probes, fmt, title=f"Loss-surface probes along training ({model}, {mode}, seed {seed})",
          notes=["loss_range: max - min of the loss over the step sizes eta in [lr/2, 4 lr] along -g; grad_pred_max: "
                 "max over eta of ||g - grad L(w - eta g)||; beta_eff: max over eta of that / ||eta g||; hessian_top: "
                 "the top Hessian eigenvalue (Santurkar et al. 2018). rate: shared (both networks at one rate) or "
                 "own (each at its tuned rate)."])


class TierName(str, Enum):
    quick = "quick"
    standard = "standard"
    full = "full"


@app.command()
def report(
    tier: Annotated[TierName, typer.Option(
        help="quick: a smoke test in minutes (CI); standard: every trained claim decided on 2 CPU cores (<= 2 h), "
             "the committed reports/; full: the papers' scale on a GPU or a cluster.")] = TierName.quick,
    out: Annotated[Optional[Path], typer.Option(
        help="Report folder (default: reports/ for the standard tier, runs/report-quick/ and runs/report-full/ "
             "for the others).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of every experiment.")] = 0,
    section: Annotated[Optional[list[str]], typer.Option("--section", help="Only these sections (repeatable).")] = None,
    all_sections: Annotated[bool, typer.Option("--all", help="Every section, the slower claims included.")] = False,
    results_root: Annotated[Optional[Path], typer.Option(
        help="Where the experiments keep their resumable results, a folder per experiment, tier and seed "
             "(default: runs/experiments).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite a folder that holds another tier's report.")] = False,
) -> None:
    """Write the paper-style report (Markdown, LaTeX, CSV, PNG) of one tier."""
    from analysis.experiments.runner import RESULTS_ROOT
    from analysis.report.build import build_report

    if all_sections and section:
        raise ValueError("give --all or --section, not both")
    index = build_report(out, tier=tier.value, seed=seed, sections="all" if all_sections else section,
                         results_root=results_root or RESULTS_ROOT, force=force)
    typer.echo(f"wrote {index}")


budgets_app = typer.Typer(help="Parameter and MAC budgets (TOML).", no_args_is_help=True)
app.add_typer(budgets_app, name="budgets")


@budgets_app.command("check")
def budgets_check(
    file: Annotated[Path, typer.Argument(help="The budget file.")] = Path("budgets.toml"),
    fmt: FormatOption = Format.table,
) -> None:
    """Check every budget in FILE; exits 1 when any is exceeded."""
    from analysis.instruments.budgets import check_budgets, overshoot_message

    rows = check_budgets(file)
    _emit(rows, fmt, title=f"Budgets in {file}")
    if not rows["ok"].all():
        typer.echo(f"over budget:\n{overshoot_message(rows)}", err=True)
        raise typer.Exit(1)


def main() -> None:
    """Console entry point: run the app, turning bad input into one clear line on stderr."""
    from analysis.training.trainer import TrainingDiverged

    try:
        app()
    except (ValueError, TypeError, KeyError, TrainingDiverged) as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(2)
    except OSError as err:  # a missing file, a full disk, no permission: the path and the reason, no traceback
        reason = f"{err.filename}: {err.strerror}" if err.filename and err.strerror else str(err)
        typer.echo(f"error: {reason}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
