"""Training: run configs, the trainer loop and its callbacks, checkpoints, distributed wrappers."""

from gated_attention.train.callbacks import SpikeMonitor, TrainerCallback, read_metrics
from gated_attention.train.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_model,
    save_model,
)
from gated_attention.train.config import (
    DataConfig,
    DistributedConfig,
    RunConfig,
    TrainConfig,
    load_run_config,
)
from gated_attention.train.optim import build_optimizer, lr_at
from gated_attention.train.trainer import Trainer, TrainingDiverged, TrainResult, train

__all__ = [
    "CheckpointError",
    "DataConfig",
    "DistributedConfig",
    "RunConfig",
    "SpikeMonitor",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TrainerCallback",
    "TrainingDiverged",
    "build_optimizer",
    "latest_checkpoint",
    "load_model",
    "load_run_config",
    "lr_at",
    "read_metrics",
    "save_model",
    "train",
]
