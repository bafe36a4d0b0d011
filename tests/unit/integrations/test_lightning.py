"""The Lightning callback writes the store the plain recorder writes for the same run, bitwise."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

pl = pytest.importorskip("lightning.pytorch")

import conjugacy  # noqa: E402
from conjugacy.integrations.lightning import TrajectoryCallback  # noqa: E402
from conjugacy.stores.contract import open_trajectory  # noqa: E402

NAMES = ["net.*.weight", "net.2.bias"]
STEPS, BATCH, SAMPLES = 30, 8, 48  # 6 batches an epoch: 5 epochs


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 2))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


def loader() -> torch.utils.data.DataLoader:
    gen = torch.Generator().manual_seed(1)
    data = torch.utils.data.TensorDataset(
        torch.randn(SAMPLES, 5, generator=gen), torch.randn(SAMPLES, 2, generator=gen)
    )
    return torch.utils.data.DataLoader(data, batch_size=BATCH, shuffle=False)


def fit(callback, accumulate: int = 1) -> None:
    torch.manual_seed(0)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=STEPS,
        accumulate_grad_batches=accumulate,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
    )
    trainer.fit(Tiny(), loader())


def plain(path, every: int) -> None:
    """The same training as a plain loop, recorded with conjugacy.record."""
    torch.manual_seed(0)
    module = Tiny()
    opt = module.configure_optimizers()
    with conjugacy.record(path, module, NAMES, every=every) as rec:
        step = 0
        while step < STEPS:
            for i, batch in enumerate(loader()):
                opt.zero_grad()
                loss = module.training_step(batch, i)
                loss.backward()
                opt.step()
                rec.step(loss=loss)
                step += 1
                if step == STEPS:
                    break


@pytest.mark.parametrize("every", [1, 4])
def test_callback_store_equals_the_plain_recorder_bitwise(tmp_path, every):
    callback = TrajectoryCallback(tmp_path / "pl.zarr", NAMES, every=every, attrs={"seed": 0})
    fit(callback)
    assert callback.status == "complete"
    plain(tmp_path / "plain.zarr", every)
    ours, ref = open_trajectory(tmp_path / "pl.zarr"), open_trajectory(tmp_path / "plain.zarr")
    assert ours.attrs["seed"] == 0 and ours.attrs["framework"].startswith("lightning")
    np.testing.assert_array_equal(ours["step"].values, np.arange(0, STEPS + 1, every))
    assert (
        sorted(ours.data_vars)
        == sorted(ref.data_vars)
        == [
            "loss",
            "net.0.weight",
            "net.2.bias",
            "net.2.weight",
        ]
    )
    for name in ours.data_vars:
        np.testing.assert_array_equal(ours[name].values, ref[name].values, err_msg=name)
    assert np.isfinite(ours["loss"].values[0, 1:]).all()


def test_accumulated_batches_record_optimizer_steps(tmp_path):
    callback = TrajectoryCallback(tmp_path / "acc.zarr", "net.0.bias")
    fit(callback, accumulate=3)
    ds = open_trajectory(tmp_path / "acc.zarr")
    np.testing.assert_array_equal(ds["step"].values, np.arange(STEPS + 1))
    assert (np.diff(ds["net.0.bias"].values[0], axis=0) != 0).any(axis=1).all()  # each moved


def test_reachable_from_the_package():
    assert conjugacy.integrations.lightning.TrajectoryCallback is TrajectoryCallback


class Crashing(Tiny):
    def training_step(self, batch, batch_idx):
        if self.trainer.global_step == 15:
            raise RuntimeError("node lost")
        return super().training_step(batch, batch_idx)


def test_a_crashed_fit_resumes_from_its_checkpoint(tmp_path):
    """Checkpoints every epoch (6 steps); a crash at step 15; fit again from the step-12 one."""
    path, ckpts = tmp_path / "run.zarr", tmp_path / "ckpt"

    def trainer(callback):
        return pl.Trainer(
            accelerator="cpu",
            devices=1,
            max_steps=STEPS,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[
                callback,
                pl.callbacks.ModelCheckpoint(ckpts, every_n_train_steps=6, save_top_k=-1),
            ],
        )

    torch.manual_seed(0)
    with pytest.raises(RuntimeError, match="node lost"):
        trainer(TrajectoryCallback(path, NAMES)).fit(Crashing(), loader())
    with pytest.raises(Exception, match="never sealed"):
        open_trajectory(path)
    ckpt = next(ckpts.glob("*step=12.ckpt"))
    callback = TrajectoryCallback(path, NAMES, resume=True)
    trainer(callback).fit(Tiny(), loader(), ckpt_path=ckpt)
    assert callback.status == "complete"
    plain(tmp_path / "plain.zarr", 1)
    ours, ref = open_trajectory(path), open_trajectory(tmp_path / "plain.zarr")
    for name in [*ref.data_vars, "step"]:
        np.testing.assert_array_equal(ours[name].values, ref[name].values, err_msg=name)
