"""Record a transformers `Trainer` run's trajectory: `TrajectoryCallback` over `record`.

    from conjugacy.integrations.hf import TrajectoryCallback

    trainer = Trainer(model, args, train_dataset=ds,
                      callbacks=[TrajectoryCallback("runs/seed0.zarr", ["*.attn.c_attn.weight"])])

Tensors are named as in the model (`transformer.h.0.attn.c_attn.weight` for
GPT-2). The store starts at `on_train_begin` (the model as training starts:
step `state.global_step`, 0 unless resumed from a checkpoint), takes a
snapshot after every optimizer step (`on_step_end`), is flushed before the
Trainer saves a checkpoint (`control.should_save`), and is sealed at
`on_train_end`. `trainer.train(resume_from_checkpoint=...)` with
`resume=True` continues a store left unsealed by a crash at the
checkpoint's step. The Trainer hands callbacks no per-step loss: `loss` is
NaN (the Trainer's own logs hold it). Needs transformers and accelerate
(`pip install conjugacy[hf]`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import transformers
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from conjugacy.training.record import ModelRecorder, record


class TrajectoryCallback(TrainerCallback):
    """Record tensors of the Trainer's model after every optimizer step (see `conjugacy.record`).

    Arguments as `conjugacy.record` takes them, but for the model (the
    Trainer's), `start` (`state.global_step`) and `steps` (`state.max_steps`).
    `recorder` is the running recorder and `status` the store's status once
    training ended.
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
        self.path = Path(path)
        self.options = {
            "tensors": tensors,
            "every": every,
            "init": init,
            "attrs": {**(attrs or {}), "framework": f"transformers {transformers.__version__}"},
            "resume": resume,
            "rank": rank,
        }
        self.recorder: ModelRecorder | None = None
        self.status: str | None = None

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: Any = None,
        **kwargs: Any,
    ) -> None:
        if model is None:
            raise ValueError("TrajectoryCallback: the Trainer passed no model to on_train_begin")
        steps = state.max_steps if state.max_steps and state.max_steps > 0 else None
        self.recorder = record(
            self.path, model, start=state.global_step, steps=steps, **self.options
        )

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        rec = self.recorder
        if rec is None:
            return
        rec.step(loss=None, step=state.global_step)
        if control.should_save:
            rec.flush()  # the checkpoint saved next never lies ahead of the store

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.recorder is not None:
            self.status = self.recorder.close()
