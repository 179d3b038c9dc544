"""The battery-cell fleet workload: ECM simulator, FFNN-48/69 and CIFAR-conv models, seeded training."""

from mmstore import register_group_trainer, register_trainer

from workloads.batched import batched_forward, stack_params, unstack_params
from workloads.datasets import DatasetError, DatasetRef, read_dataset, write_dataset, write_datasets
from workloads.drift import model_errors, select_updates
from workloads.fleet import Fleet, initial_fleet, initial_fleet_params
from workloads.images import image_dataset, synthetic_images
from workloads.models import (
    FFNN,
    FFNN48,
    FFNN69,
    CifarConv,
    last_layer_prefixes,
    parameter_count,
    seeded_model,
)
from workloads.simulator import simulate_cycle
from workloads.training import TrainRecipe, evaluate, train, train_from_bytes, train_group, train_stacked

# Registered here rather than with a decorator in workloads.training: stored provenance records pin
# that module's source digest. Importing workloads.training always runs this package first.
register_trainer(train_from_bytes)
register_group_trainer(train_group)

__all__ = [
    "FFNN",
    "FFNN48",
    "FFNN69",
    "CifarConv",
    "last_layer_prefixes",
    "parameter_count",
    "seeded_model",
    "simulate_cycle",
    "synthetic_images",
    "image_dataset",
    "TrainRecipe",
    "train",
    "train_stacked",
    "train_group",
    "evaluate",
    "stack_params",
    "unstack_params",
    "batched_forward",
    "Fleet",
    "initial_fleet",
    "initial_fleet_params",
    "model_errors",
    "select_updates",
    "DatasetRef",
    "DatasetError",
    "write_dataset",
    "write_datasets",
    "read_dataset",
]
