"""Datasets by name with the published augmentation, stratified validation / few-shot splits, in-memory fast paths."""
from .bundle import DataBundle, build_datasets, eval_split
from .memory import TensorImageDataset, as_tensors, is_in_memory, tensor_augmentation
from .registry import DATASETS
from .splits import dataset_targets, stratified_split

__all__ = [
    "DATASETS",
    "DataBundle",
    "TensorImageDataset",
    "as_tensors",
    "build_datasets",
    "dataset_targets",
    "eval_split",
    "is_in_memory",
    "stratified_split",
    "tensor_augmentation",
]
