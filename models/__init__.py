"""JAX models: architectures looked up by name, the built-in training recipes, and serving."""

from models.architectures import ARCHITECTURES, Apply, UnknownArchitectureError, architecture, mlp
from models.datasets import Dataset, UnknownDatasetError, load
from models.runtime import ServingModel
from models.train import BUILTIN, TrainedModel, TrainingRecipe, UnknownModelError, train, train_and_register

__all__ = [
    "ARCHITECTURES",
    "Apply",
    "BUILTIN",
    "Dataset",
    "ServingModel",
    "TrainedModel",
    "TrainingRecipe",
    "UnknownArchitectureError",
    "UnknownDatasetError",
    "UnknownModelError",
    "architecture",
    "load",
    "mlp",
    "train",
    "train_and_register",
]
