"""Datasets, one job per module: readers.py (the dataset registry, DATASETS, and the IDX, CIFAR and ImageFolder
readers), cache.py (the checksummed decoded cache and the loaders that read through it: load_train,
load_unlabeled, load_test), augment.py (DeviceAugment, on-device augmentation). A cell's validation set and
training subset of a split: bench/subsets.py."""

from .augment import DeviceAugment
from .cache import cache_dir, load_test, load_train, load_unlabeled
from .readers import (AXIS_CHECKS, DATASET_FORMS, DATASETS, FASHION_CLASSES, FASHION_FILES, SYNTHETIC,
                      DataNotFoundError, DatasetKind, Split, TrainData, fashion_mnist_folder,
                      fashion_mnist_search_path, input_shape, is_class_range, is_real, normalise_dataset_name,
                      read_idx, train_images)

__all__ = ["AXIS_CHECKS", "DATASETS", "DATASET_FORMS", "FASHION_CLASSES", "FASHION_FILES", "SYNTHETIC",
           "DataNotFoundError", "DatasetKind", "DeviceAugment", "Split", "TrainData", "cache_dir",
           "fashion_mnist_folder", "fashion_mnist_search_path", "input_shape", "is_class_range", "is_real",
           "load_test", "load_train", "load_unlabeled", "normalise_dataset_name", "read_idx", "train_images"]
