"""Tensor shapes and recorded steps of a condition, known from its config alone.

Pure Python: config validation needs them before torch or any data is loaded.
"""

from __future__ import annotations

from typing import Any

# (input features, classes) of the datasets the nets train on.
DATASET_DIMS: dict[str, tuple[int, int]] = {
    "digits": (64, 10),
    "mnist": (784, 10),
    "fashion_mnist": (784, 10),
    "cifar10": (3072, 10),
}
# (channels, height, width) of each dataset's images, for the CNNs.
DATASET_IMAGES: dict[str, tuple[int, int, int]] = {
    "digits": (1, 8, 8),
    "mnist": (1, 28, 28),
    "fashion_mnist": (1, 28, 28),
    "cifar10": (3, 32, 32),
}
# The files of each dataset read from data_dir (each may also be gzipped).
DATASET_FILES: dict[str, tuple[str, ...]] = {
    "mnist": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "fashion_mnist": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),  # MNIST's format
    "cifar10": tuple(f"data_batch_{i}" for i in range(1, 6)),
}
# Where a dataset's files are when data_dir is not given: Debian's
# dataset-fashion-mnist package installs Fashion-MNIST here.
DATASET_DIRS: dict[str, str] = {"fashion_mnist": "/usr/share/datasets/fashion-mnist"}
LENET_WIDTHS = (6, 16, 120, 84)  # conv1, conv2 channels; fc1, fc2 units (LeNet-5)
RESNET_STAGES = (16, 32, 64)  # ResNet-20: 3 stages of 3 basic blocks
RESNET_BLOCKS = 3
CNN_LAST_LAYER = {"lenet": "fc3.weight", "resnet20": "fc.weight"}  # default observables


def tensor_shapes(cond: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Per-trajectory shape of every tensor the condition's system can record."""
    if cond["system"] in ("omd", "ogd", "bisection"):
        return {"x": (2,)}
    if cond["system"] == "cnn":
        return cnn_shapes(cond["arch"], cond["dataset"])
    if cond["system"] == "transformer":
        return transformer_shapes(cond)
    if cond["system"] == "mlp":
        n_in, n_out = cond["inputs"], 1
    else:
        n_in, n_out = DATASET_DIMS[cond["dataset"]]
    h = cond["hidden"]
    shapes: dict[str, tuple[int, ...]] = {"fc1.weight": (h, n_in), "fc2.weight": (n_out, h)}
    if cond["bias"]:
        shapes["fc1.bias"] = (h,)
        shapes["fc2.bias"] = (n_out,)
    return shapes


def transformer_shapes(cond: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Parameters of the one-layer Transformer, named and shaped as in Nanda et al.'s code."""
    d, h, m, p = cond["d_model"], cond["n_heads"], cond["d_mlp"], cond["p"]
    e = d // h
    return {
        "embed.W_E": (d, p + 1),  # vocabulary 0..p-1 and '=' (token p)
        "pos_embed.W_pos": (3, d),
        "blocks.0.attn.W_Q": (h, e, d),
        "blocks.0.attn.W_K": (h, e, d),
        "blocks.0.attn.W_V": (h, e, d),
        "blocks.0.attn.W_O": (d, h * e),
        "blocks.0.mlp.W_in": (m, d),
        "blocks.0.mlp.b_in": (m,),
        "blocks.0.mlp.W_out": (d, m),
        "blocks.0.mlp.b_out": (d,),
        "unembed.W_U": (d, p),  # outputs 0..p-1
    }


def lenet_geometry(image: tuple[int, int, int]) -> dict[str, int]:
    """LeNet-5 on 28x28 and larger (5x5 kernels, conv2 unpadded); 3x3 'same' kernels on 8x8."""
    _, h, w = image
    big = min(h, w) >= 28
    k = 5 if big else 3
    pad1, pad2 = (2, 0) if big else (1, 1)
    h, w = (h + 2 * pad1 - k + 1) // 2, (w + 2 * pad1 - k + 1) // 2
    h, w = (h + 2 * pad2 - k + 1) // 2, (w + 2 * pad2 - k + 1) // 2
    if h < 1 or w < 1:
        raise ValueError(f"images of {image} are too small for LeNet")
    return {"kernel": k, "pad1": pad1, "pad2": pad2, "flat": LENET_WIDTHS[1] * h * w}


def cnn_shapes(arch: str, dataset: str) -> dict[str, tuple[int, ...]]:
    """Per-net tensor shapes of LeNet-5 or ResNet-20, named as PyTorch would name them."""
    image = DATASET_IMAGES[dataset]
    channels, n_out = image[0], DATASET_DIMS[dataset][1]
    shapes: dict[str, tuple[int, ...]] = {}
    if arch == "lenet":
        g = lenet_geometry(image)
        k, (c1, c2, f1, f2) = g["kernel"], LENET_WIDTHS
        layers = {
            "conv1": (c1, channels, k, k),
            "conv2": (c2, c1, k, k),
            "fc1": (f1, g["flat"]),
            "fc2": (f2, f1),
            "fc3": (n_out, f2),
        }
        for name, shape in layers.items():
            shapes[f"{name}.weight"] = shape
            shapes[f"{name}.bias"] = (shape[0],)
        return shapes
    if arch != "resnet20":
        raise ValueError(f"unknown CNN architecture {arch!r}; expected 'lenet' or 'resnet20'")
    first = RESNET_STAGES[0]
    shapes.update({"conv1.weight": (first, channels, 3, 3), "bn1.weight": (first,)})
    shapes["bn1.bias"] = (first,)
    planes_in = first
    for stage, planes in enumerate(RESNET_STAGES, start=1):
        for block in range(RESNET_BLOCKS):
            prefix = f"layer{stage}.{block}"
            shapes[f"{prefix}.conv1.weight"] = (planes, planes_in, 3, 3)
            shapes[f"{prefix}.conv2.weight"] = (planes, planes, 3, 3)
            for bn in ("bn1", "bn2"):
                shapes[f"{prefix}.{bn}.weight"] = (planes,)
                shapes[f"{prefix}.{bn}.bias"] = (planes,)
            planes_in = planes
    shapes["fc.weight"] = (n_out, planes_in)
    shapes["fc.bias"] = (n_out,)
    return shapes


def recorded_snapshots(cond: dict[str, Any]) -> list[int]:
    """Optimizer steps at which the trajectory holds a snapshot (step 0 is the init)."""
    return list(range(0, cond["steps"] + 1, cond["record_every"]))
