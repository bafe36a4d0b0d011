"""Record a Lightning run's trajectory: `TrajectoryCallback`, a thin wrapper over `record`.

    from conjugacy.integrations.lightning import TrajectoryCallback

    trainer = lightning.Trainer(callbacks=[TrajectoryCallback("runs/seed0.zarr", ["net.*.weight"])])

Tensors are named as in the LightningModule (`net.0.weight` for `self.net`).
The store starts at `on_train_start` (the model as training starts: step
`trainer.global_step`, 0 unless resumed from a checkpoint), takes a
snapshot after every optimizer step (`on_train_batch_end` when
`trainer.global_step` moved, with the loss of `training_step`), is flushed
before each checkpoint is saved (`on_save_checkpoint`), so it never lags a
checkpoint, and is sealed at `on_train_end`. An exception leaves it unsealed:
`Trainer.fit(..., ckpt_path=...)` with `resume=True` continues it at the
checkpoint's step. Needs `lightning` (`pip install conjugacy[lightning]`);
`pytorch_lightning` is used when only it is installed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from conjugacy.training.record import ModelRecorder, record

try:
    import lightning.pytorch as pl

    FRAMEWORK = "lightning"
except ImportError:  # the standalone package of the same code
    import pytorch_lightning as pl

    FRAMEWORK = "pytorch_lightning"


def batch_loss(outputs: Any) -> Any:
    """The loss `training_step` returned: a tensor, {"loss": tensor, ...} or None."""
    if isinstance(outputs, dict):
        outputs = outputs.get("loss")
    return outputs if outputs is not None else math.nan


class TrajectoryCallback(pl.Callback):
    """Record tensors of the LightningModule after every optimizer step (see `conjugacy.record`).

    Arguments as `conjugacy.record` takes them, but for the model (the
    LightningModule), `start` (the trainer's global step) and `steps`
    (`max_steps`, or the trainer's estimate, when known). `recorder` is the
    running recorder and `status` the store's status once training ended.
    """

    def __init__(
        self,
        path: str | Path,
        tensors: str | list[str] | tuple[str, ...] | None = None,
        *,
        every: int = 1,
        init: int | None = None,
        attrs: dict[str, Any] | None = None,
        resume: bool = False,
        rank: int | None = None,
    ) -> None:
        super().__init__()
        self.path = Path(path)
        self.options = {
            "tensors": tensors,
            "every": every,
            "init": init,
            "attrs": {**(attrs or {}), "framework": f"{FRAMEWORK} {pl.__version__}"},
            "resume": resume,
            "rank": rank,
        }
        self.recorder: ModelRecorder | None = None
        self.status: str | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.recorder = record(
            self.path,
            pl_module,
            start=trainer.global_step,
            steps=planned_steps(trainer),
            **self.options,
        )

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        rec = self.recorder
        if rec is not None and trainer.global_step > rec.next_step - 1:  # an optimizer step
            rec.step(loss=batch_loss(outputs), step=trainer.global_step)

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if self.recorder is not None and not self.recorder.closed:
            self.recorder.flush()  # the store holds every snapshot up to the checkpoint

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.recorder is not None:
            self.status = self.recorder.close()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if self.recorder is not None:
            self.recorder.abort()  # unsealed: resume=True continues it


def planned_steps(trainer: pl.Trainer) -> int | None:
    """The global step training ends at, when the trainer knows it (pre-allocates the store)."""
    if trainer.max_steps and trainer.max_steps > 0:
        return int(trainer.max_steps)
    try:
        estimate = trainer.estimated_stepping_batches
    except Exception:  # noqa: BLE001 - only an estimate: the store grows without it
        return None
    return int(estimate) if math.isfinite(estimate) else None
