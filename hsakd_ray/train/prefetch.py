"""With ``data.download`` on, fetch the dataset in the driver before any worker starts: the download's progress bar
(torchvision's) shows on this console, and workers on this node find the files in place instead of racing for them."""
from __future__ import annotations

from ..config import DataConfig
from ..data.registry import load_source

DOWNLOADABLE = ("cifar10", "cifar100", "stl10")


def prefetch_dataset(data: DataConfig) -> None:
    if not data.download or data.name not in DOWNLOADABLE:
        return
    print(f"data: fetching {data.name} into {data.root} (data.download is on)", flush=True)
    load_source(data)
