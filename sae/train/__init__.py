"""Dictionary training: configs, the trainer, checkpoints."""

from sae.train.config import TrainConfig
from sae.train.from_model import train_on_model
from sae.train.trainer import TrainProgress, TrainResult, train

__all__ = ["TrainConfig", "TrainProgress", "TrainResult", "train", "train_on_model"]
