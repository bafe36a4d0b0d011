"""LeNet-5 and ResNet-20 with all inits of a seed as one computation (systems/cnn.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import xarray as xr

from conjugacy import config
from conjugacy.config.shapes import RESNET_BLOCKS, RESNET_STAGES, cnn_shapes, lenet_geometry
from conjugacy.systems.cnn import CNN
from conjugacy.training.train import train


def cnn(**kw) -> dict:
    base = {"system": "cnn", "arch": "lenet", "steps": 4, "inits": 3, "batch_size": 16}
    cfg = config.resolve({"experiment": "t", "conditions": {"c": {**base, **kw}}})
    return cfg["conditions"]["c"]


def n_params(shapes: dict) -> int:
    return sum(math.prod(s) for s in shapes.values())


def test_parameter_counts_are_the_published_ones():
    # LeNet-5 on MNIST: 61,706 parameters; ResNet-20 on CIFAR-10: 0.27 M (He et al. 2016).
    assert n_params(cnn_shapes("lenet", "mnist")) == 61706
    assert n_params(cnn_shapes("resnet20", "cifar10")) == 269722
    shapes = cnn_shapes("resnet20", "cifar10")
    convs = [n for n in shapes if n.endswith("conv1.weight") or n.endswith("conv2.weight")]
    assert len(convs) == 1 + 2 * RESNET_BLOCKS * len(RESNET_STAGES)  # 19 convs + fc = 20 layers
    assert shapes["fc.weight"] == (10, 64) and shapes["conv1.weight"] == (16, 3, 3, 3)
    assert cnn_shapes("lenet", "digits")["fc1.weight"] == (120, 16 * 2 * 2)


def reference_lenet(p: dict, n: int, x: torch.Tensor, image) -> torch.Tensor:
    """One net, written with ungrouped torch ops: the batched forward must equal it."""
    g = lenet_geometry(image)
    h = F.max_pool2d(
        F.relu(F.conv2d(x, p["conv1.weight"][n], p["conv1.bias"][n], padding=g["pad1"])), 2
    )
    h = F.max_pool2d(
        F.relu(F.conv2d(h, p["conv2.weight"][n], p["conv2.bias"][n], padding=g["pad2"])), 2
    )
    h = h.flatten(1)
    h = F.relu(F.linear(h, p["fc1.weight"][n], p["fc1.bias"][n]))
    h = F.relu(F.linear(h, p["fc2.weight"][n], p["fc2.bias"][n]))
    return F.linear(h, p["fc3.weight"][n], p["fc3.bias"][n])


def reference_resnet(p: dict, n: int, x: torch.Tensor) -> torch.Tensor:
    def bn(h, name):
        return F.batch_norm(h, None, None, p[f"{name}.weight"][n], p[f"{name}.bias"][n], True)

    h = F.relu(bn(F.conv2d(x, p["conv1.weight"][n], padding=1), "bn1"))
    planes_in = RESNET_STAGES[0]
    for s, planes in enumerate(RESNET_STAGES, start=1):
        for b in range(RESNET_BLOCKS):
            pre, stride = f"layer{s}.{b}", 2 if planes != planes_in else 1
            out = F.relu(
                bn(F.conv2d(h, p[f"{pre}.conv1.weight"][n], stride=stride, padding=1), f"{pre}.bn1")
            )
            out = bn(F.conv2d(out, p[f"{pre}.conv2.weight"][n], padding=1), f"{pre}.bn2")
            if stride == 2:
                sub = h[:, :, ::2, ::2]
                pad = (planes - planes_in) // 2
                h = F.pad(sub, (0, 0, 0, 0, pad, pad))
            h = F.relu(out + h)
            planes_in = planes
    return F.linear(h.mean(dim=(2, 3)), p["fc.weight"][n], p["fc.bias"][n])


@pytest.mark.parametrize("arch", ["lenet", "resnet20"])
def test_batched_forward_equals_each_net_alone(arch):
    system = CNN(cnn(arch=arch, inits=3, init_perturbation=0.3), seed=1)
    x = system.x[:12]
    with torch.no_grad():
        batched = system._forward(x.repeat(1, system.inits, 1, 1))
        for n in range(system.inits):
            if arch == "lenet":
                alone = reference_lenet(system.params, n, x, system.image)
            else:
                alone = reference_resnet(system.params, n, x)
            assert torch.allclose(batched[n], alone, rtol=1e-4, atol=1e-5), n
    # The perturbation is large here, so the nets really differ.
    assert not torch.allclose(batched[0], batched[1], atol=1e-3)


@pytest.mark.parametrize("arch", ["lenet", "resnet20"])
def test_batching_does_not_couple_inits(tmp_path, arch):
    record = ["fc3.weight"] if arch == "lenet" else ["fc.weight", "layer3.2.bn2.weight"]
    kw = {"arch": arch, "record": record, "steps": 3, "batch_size": 8, "momentum": 0.9}
    many = xr.open_zarr(
        train(cnn(inits=3, **kw), 2, tmp_path / "a.zarr", progress=False), consolidated=False
    )
    one = xr.open_zarr(
        train(cnn(inits=1, **kw), 2, tmp_path / "b.zarr", progress=False), consolidated=False
    )
    for name in record:
        a, b = many[name].values[0], one[name].values[0]
        assert a.shape == b.shape and np.allclose(a, b, rtol=1e-5, atol=1e-6), name
        assert not np.allclose(a[0], a[-1])  # the weights moved
    assert np.allclose(many["loss"].values[0], one["loss"].values[0], rtol=1e-5)


def test_training_is_deterministic_and_records_the_layout(tmp_path):
    cond = cnn(steps=5, inits=2, record=["fc3.weight", "conv1.weight"])
    a = xr.open_zarr(train(cond, 0, tmp_path / "a.zarr", progress=False), consolidated=False)
    b = xr.open_zarr(train(cond, 0, tmp_path / "b.zarr", progress=False), consolidated=False)
    assert a["fc3.weight"].dims == ("init", "step", "fc3.weight_dim0", "fc3.weight_dim1")
    assert a["fc3.weight"].shape == (2, 6, 10, 84) and a["conv1.weight"].shape == (2, 6, 6, 1, 3, 3)
    for name in ("fc3.weight", "conv1.weight", "loss"):
        assert np.array_equal(a[name].values, b[name].values), name


def test_lenet_learns_the_digits(tmp_path):
    cond = cnn(steps=60, inits=2, batch_size=60, lr=0.1, momentum=0.9)
    loss = xr.open_zarr(train(cond, 0, tmp_path / "a.zarr", progress=False), consolidated=False)[
        "loss"
    ].values
    assert loss[:, 0].mean() > 2.2  # chance level, ln 10 = 2.30
    assert loss[:, -10:].mean() < 1.2


def test_config_defaults_and_errors_name_the_key():
    assert cnn()["record"] == ["fc3.weight"] and cnn(arch="resnet20")["record"] == ["fc.weight"]
    with pytest.raises(
        config.ConfigError, match=r"conditions\.c\.record: .*'fc3\.weight'.*fc\.bias"
    ):
        cnn(arch="resnet20", record=["fc3.weight"])
    with pytest.raises(
        config.ConfigError, match=r"conditions\.c\.data_dir: dataset mnist needs it"
    ):
        cnn(dataset="mnist")
    with pytest.raises(config.ConfigError, match=r"conditions\.c\.arch"):
        cnn(arch="vgg")
