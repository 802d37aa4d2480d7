"""The shippable network of a checkpoint: its backbone alone (auxiliary heads stripped) in eval mode, an example
input of the size it was trained at, and standalone TorchScript / ONNX files of it (no hsakd-ray needed to run them).

Input: normalised float32 images (N, 3, H, W), normalised as the training data was (docs/configuration.md, data);
output: class logits (N, num_classes)."""
from __future__ import annotations

from pathlib import Path

import torch
import yaml
from torch import nn

from ..errors import ConfigError
from .checkpoint import CONFIG_FILE, load_network, read_meta

NATIVE_SIZE = {"cifar10": 32, "cifar100": 32, "digits": 32, "synthetic": 32, "stl10": 96, "tinyimagenet": 64,
               "imagefolder": 224}
FORMATS = ("torchscript", "onnx")


def deployable_network(checkpoint: str | Path) -> nn.Module:
    """The checkpoint's backbone with its trained weights, heads dropped, in eval mode, on the CPU."""
    net = load_network(checkpoint, aux_stages=[], role="checkpoint")
    return net.backbone.eval()


def input_size(checkpoint: str | Path) -> int:
    """The side of the square images the network was trained on (``data.image_size`` or the dataset's own)."""
    file = Path(checkpoint) / CONFIG_FILE
    data = (yaml.safe_load(file.read_text()) or {}).get("data", {}) if file.is_file() else {}
    name = data.get("name") or read_meta(checkpoint).get("dataset")
    return int(data.get("image_size") or NATIVE_SIZE.get(name, 32))


def example_input(checkpoint: str | Path, batch: int = 2) -> torch.Tensor:
    """A fixed, seeded batch of inputs of the trained size (an MLflow input example, a tracing input)."""
    size = input_size(checkpoint)
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


def export(checkpoint: str | Path, fmt: str, out: str | Path) -> Path:
    """Write the checkpoint's deployable network to ``out`` as TorchScript (``torch.jit.load``) or ONNX."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if fmt == "onnx":
        try:
            import onnx  # noqa: F401  (torch's exporter writes through it)
        except ImportError:
            raise ConfigError("--format onnx needs the onnx package: pip install 'hsakd-ray[onnx]'") from None
    net, example = deployable_network(checkpoint), example_input(checkpoint)  # a CheckpointError is one line
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    with torch.no_grad():
        if fmt == "torchscript":
            torch.jit.save(torch.jit.trace(net, example), str(tmp))
        else:
            torch.onnx.export(net, (example,), str(tmp), input_names=["images"], output_names=["logits"],
                              dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
    tmp.replace(out)  # no half-written file under the asked name
    return out
