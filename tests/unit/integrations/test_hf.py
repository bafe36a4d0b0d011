"""The transformers callback: the plain recorder's store for the same seeded run, bitwise."""

from __future__ import annotations

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

import conjugacy  # noqa: E402
from conjugacy.integrations.hf import TrajectoryCallback  # noqa: E402
from conjugacy.stores.contract import open_trajectory  # noqa: E402

NAMES = ["transformer.h.*.attn.c_attn.weight", "transformer.wte.weight"]
STEPS = 12


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Tokens(torch.utils.data.Dataset):
    """Random token sequences, made here (nothing is downloaded)."""

    def __init__(self) -> None:
        gen = torch.Generator().manual_seed(3)
        self.ids = torch.randint(0, 40, (32, 10), generator=gen)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def run(tmp_path, callback) -> None:
    """A tiny GPT-2 from its config, trained by the Trainer on the CPU with a fixed seed."""
    config = transformers.GPT2Config(
        vocab_size=40, n_positions=16, n_embd=16, n_layer=2, n_head=2, resid_pdrop=0.0
    )
    transformers.set_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=STEPS,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        seed=0,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    transformers.Trainer(
        model=model, args=args, train_dataset=Tokens(), callbacks=[callback]
    ).train()


class Plain(transformers.TrainerCallback):
    """conjugacy.record driven by hand, with copies of the parameters after each step."""

    def __init__(self, path) -> None:
        self.path, self.copies = path, []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.model = model
        self.rec = conjugacy.record(self.path, model, NAMES, every=2)
        self.copies.append(self.snapshot())

    def on_step_end(self, args, state, control, **kwargs):
        self.rec.step()
        self.copies.append(self.snapshot())

    def on_train_end(self, args, state, control, **kwargs):
        self.rec.close()

    def snapshot(self):
        return {n: p.detach().clone() for n, p in self.model.named_parameters()}


def test_callback_store_equals_the_plain_recorder_bitwise(tmp_path):
    callback = TrajectoryCallback(tmp_path / "hf.zarr", NAMES, every=2, attrs={"seed": 0})
    run(tmp_path, callback)
    assert callback.status == "complete"
    plain = Plain(tmp_path / "plain.zarr")
    run(tmp_path, plain)
    ours, ref = open_trajectory(tmp_path / "hf.zarr"), open_trajectory(tmp_path / "plain.zarr")
    assert ours.attrs["framework"].startswith("transformers") and ours.attrs["seed"] == 0
    np.testing.assert_array_equal(ours["step"].values, np.arange(0, STEPS + 1, 2))
    assert sorted(ours.data_vars) == sorted(ref.data_vars)
    assert len(ours.data_vars) == 4  # two layers' c_attn, wte, loss
    for name in ours.data_vars:
        np.testing.assert_array_equal(ours[name].values, ref[name].values, err_msg=name)
    for name in ("transformer.h.1.attn.c_attn.weight", "transformer.wte.weight"):
        expected = np.stack([plain.copies[t][name].numpy() for t in range(0, STEPS + 1, 2)])
        np.testing.assert_array_equal(ours[name].values[0], expected, err_msg=name)
    assert not np.array_equal(ours["transformer.wte.weight"].values[0, 0], expected[-1])
    assert np.isnan(ours["loss"].values).all()  # the Trainer hands callbacks no loss


def test_reachable_from_the_package():
    assert conjugacy.integrations.hf.TrajectoryCallback is TrajectoryCallback
