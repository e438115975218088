"""A LightningModule with a torchtally composed loss, validation metrics and a tracker.

Run on a CPU machine alone, or under DDP with two gloo processes::

    python examples/lightning_module.py
    torchrun --nproc-per-node 2 examples/lightning_module.py

(``pip install -e ".[lightning,torchmetrics]"`` first; the test extra has both.)

What it shows, each in one place below:

- the training loss is a torchtally composed loss, ``[CE] + 0.01 x [Logit L2]``;
  ``training_step`` returns its differentiable value and the progress bar shows
  the mean over the last batches (``loss.running(window)``, read on the device);
- the validation metrics are a ``MetricCollection`` joined with a torchmetrics
  metric through the adapter;
- every objective is synced once per epoch (``tt.sync_all``: a no-op in one
  process, one exchange for everything under DDP) and logged with
  ``self.log_dict(tt.compute_metrics(...))`` (``self.log`` takes numbers,
  not objectives);
- ``tt.MetricTracker`` follows the validation accuracy (best epoch, early
  stopping), and ``ModelCheckpoint`` monitors it with
  ``mode=tt.monitor_mode(...)``, the direction the objective knows;
- the objectives' state and the tracker go into Lightning's checkpoint with the
  model (``on_save_checkpoint``/``on_load_checkpoint``), so a run resumed with
  ``--resume PATH`` (``trainer.fit(..., ckpt_path=PATH)``) reports what an
  uninterrupted run reports.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torchmetrics
from lightning.fabric.utilities.warnings import PossibleUserWarning
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch import Tensor, nn
from torch.nn import functional
from torch.utils.data import DataLoader, TensorDataset

import torchtally as tt
from torchtally.contrib.torchmetrics import from_torchmetrics
from torchtally.distributed import end_distributed_run

FEATURES, CLASSES = 8, 3
TRAIN_SAMPLES, VALIDATION_SAMPLES, BATCH = 256, 64, 32
WINDOW = 4
"""Training batches the progress bar's running loss is the mean of."""
PREFIX = "val/"
MONITOR = "Accuracy"
"""The value the tracker follows and ModelCheckpoint monitors (logged as 'val/Accuracy')."""


def accuracy(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs.argmax(1) == targets).float()  # per sample: exact over uneven batches


def logit_l2(outputs: Tensor, targets: Tensor) -> Tensor:
    return outputs.pow(2).mean(1)  # per sample: a small penalty on over-confident logits


def composed_loss() -> tt.LossBase[Tensor, Tensor]:
    return tt.Loss(functional.cross_entropy, "CE") + 0.01 * tt.Loss(logit_l2, "Logit L2")


def validation_metrics() -> Any:
    ours: tt.MetricCollection[Tensor, Tensor] = tt.MetricCollection(
        Accuracy=tt.Metric(accuracy, "Accuracy", higher_is_better=True)
    )
    f1 = torchmetrics.classification.MulticlassF1Score(num_classes=CLASSES, average="macro")
    return ours | from_torchmetrics(f1, name="F1")


class Classifier(pl.LightningModule):
    """A small classifier whose loss, metrics and tracker are torchtally objects."""

    TALLIED = ("loss", "val_loss", "val_metrics", "tracker")
    """The attributes saved in (and restored from) Lightning's checkpoints."""

    def __init__(self, learning_rate: float = 0.3, patience: int = 3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = nn.Sequential(nn.Linear(FEATURES, 16), nn.Tanh(), nn.Linear(16, CLASSES))
        # Plain Python objects, not nn.Modules: their state is saved by the hooks below.
        self.loss = composed_loss()
        self.val_loss = composed_loss()
        self.val_metrics = validation_metrics()
        self.tracker = tt.MetricTracker(self.val_metrics, MONITOR, patience=patience)

    def forward(self, inputs: Tensor) -> Tensor:
        return self.model(inputs)  # type: ignore[no-any-return]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams["learning_rate"])

    # -- training ------------------------------------------------------------------------------

    def on_train_epoch_start(self) -> None:
        self.loss.reset()
        self.loss.running(WINDOW)  # remember the last WINDOW batches from here on

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        inputs, targets = batch
        value = self.loss(self(inputs), targets)  # differentiable, and accumulated (detached)
        # The mean of the last WINDOW batches, a tensor on the device: read only when drawn.
        running = self.loss.running(WINDOW)["Combined Loss"]
        self.log("loss", running, prog_bar=True, on_step=True, on_epoch=False)
        return value

    def on_train_epoch_end(self) -> None:
        tt.sync_all(self.loss)  # every rank, once per epoch
        self.log_dict(tt.compute_metrics(self.loss, prefix="train/"))

    # -- validation ----------------------------------------------------------------------------

    def on_validation_epoch_start(self) -> None:
        for objective in (self.val_loss, self.val_metrics):
            objective.reset()
        self.val_metrics.to(self.device)  # the torchmetrics state follows the model

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        inputs, targets = batch
        outputs = self(inputs)
        self.val_loss.update(outputs, targets)
        self.val_metrics.update(outputs, targets)

    def on_validation_epoch_end(self) -> None:
        tt.sync_all(self.val_loss, self.val_metrics)  # one exchange for both
        self.log_dict(tt.compute_metrics(self.val_loss, self.val_metrics, prefix=PREFIX))
        if self.trainer.sanity_checking:
            return  # Lightning's trial batches are not an epoch
        self.tracker.update()  # synced values: every rank records the same one
        self.log(f"{PREFIX}best_epoch", float(self.tracker.best_epoch))
        if self.tracker.should_stop():
            self.trainer.should_stop = True

    # -- checkpoints ---------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["torchtally"] = {name: getattr(self, name).state_dict() for name in self.TALLIED}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        for name, state in checkpoint["torchtally"].items():
            getattr(self, name).load_state_dict(state)


# -- data and trainer ------------------------------------------------------------------------------


def dataset(samples: int, seed: int) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(samples, FEATURES, generator=generator)
    centres = torch.randn(CLASSES, FEATURES, generator=torch.Generator().manual_seed(0))
    noise = 0.5 * torch.randn(samples, CLASSES, generator=generator)
    return TensorDataset(inputs, (inputs @ centres.T + noise).argmax(1))


def loaders() -> tuple[DataLoader[Any], DataLoader[Any]]:
    # Under DDP Lightning shards both with a DistributedSampler; the sizes divide evenly into
    # 2 ranks, so no sample is repeated (a repeated one would count twice in synced metrics).
    train = DataLoader(dataset(TRAIN_SAMPLES, seed=1), batch_size=BATCH)
    validation = DataLoader(dataset(VALIDATION_SAMPLES, seed=2), batch_size=BATCH)
    return train, validation


def trainer(module: Classifier, epochs: int, root: Path, **options: Any) -> pl.Trainer:
    """A CPU trainer (DDP with gloo under torchrun) that checkpoints the best epoch."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    checkpoint = ModelCheckpoint(
        dirpath=root / "checkpoints",
        monitor=PREFIX + MONITOR,
        mode=tt.monitor_mode(module.val_metrics, MONITOR),  # 'max', as the metric knows
        save_last=True,
    )
    # Lightning suggests sync_dist=True for epoch values under DDP; tt.sync_all has synced them.
    warnings.filterwarnings("ignore", ".*sync_dist=True.*", PossibleUserWarning)
    warnings.filterwarnings("ignore", ".*does not have many workers.*", PossibleUserWarning)
    return pl.Trainer(
        accelerator="cpu",
        devices=world,
        strategy="ddp" if world > 1 else "auto",  # gloo on CPU
        max_epochs=epochs,
        callbacks=[checkpoint],
        logger=CSVLogger(root),  # or WandbLogger, TensorBoardLogger: log_dict reaches them all
        default_root_dir=root,
        deterministic=True,
        log_every_n_steps=4,
        **options,
    )


def fit(
    epochs: int, root: Path, resume: Path | None = None, **options: Any
) -> tuple[Classifier, pl.Trainer]:
    """Train (or resume training) until ``epochs`` epochs are done; the module and trainer."""
    pl.seed_everything(0, workers=True, verbose=False)
    module = Classifier()
    run = trainer(module, epochs, root, **options)
    train, validation = loaders()
    run.fit(module, train, validation, ckpt_path=resume)
    return module, run


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument(
        "--root",
        type=Path,
        default=Path(tempfile.gettempdir()) / "torchtally-lightning-example",
        help="where logs and checkpoints go (default: a folder in the temporary directory)",
    )
    parser.add_argument("--resume", type=Path, default=None, help="a checkpoint to resume from")
    options = parser.parse_args(argv)
    module, run = fit(options.epochs, options.root, options.resume, enable_model_summary=False)
    if run.is_global_zero:
        tracker = module.tracker
        history = ", ".join(f"{value:.3f}" for value in tracker.history)
        print(f"world size {run.world_size}: {PREFIX}{MONITOR} by epoch: {history}")
        print(f"best epoch {tracker.best_epoch} ({PREFIX}{MONITOR} {tracker.best_value:.4f})")
        print(f"best checkpoint: {run.checkpoint_callback.best_model_path}")  # type: ignore[union-attr]
        # The last epoch's synced values equal the same values on the whole validation set,
        # computed in this one process with the final model: every shard counted once.
        inputs, targets = dataset(VALIDATION_SAMPLES, seed=2).tensors
        with torch.no_grad():
            outputs = module(inputs)
        loss = functional.cross_entropy(outputs, targets) + 0.01 * logit_l2(outputs, targets).mean()
        full = {"Accuracy": accuracy(outputs, targets).mean().item(), "Combined Loss": loss.item()}
        synced = {
            "Accuracy": tracker.history[-1],
            "Combined Loss": module.val_loss.compute()["Combined Loss"].item(),
        }
        for name, value in synced.items():
            verdict = (
                "equal" if abs(value - full[name]) <= 1e-5 * max(1.0, abs(value)) else "DIFFER"
            )
            print(
                f"last epoch, {PREFIX}{name}: synced {value:.6f}, whole validation set in one "
                f"process {full[name]:.6f}: {verdict}"
            )
    end_distributed_run()  # every rank, last (under torchrun); alone it returns at once


if __name__ == "__main__":
    main()
