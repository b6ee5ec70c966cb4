"""Continued pretraining: the trainer behind the warm start, the EM M-step and the baselines.

``train(load_train_config("configs/train/testbed-scratch.yaml", ["output_dir=runs/x"]))`` trains and
returns a :class:`TrainResult` whose ``model_dir`` holds the final Hugging Face model and tokenizer.
"""

from latent_thoughts.train.budget import (
    epochs_for_budget,
    estep_flops,
    forward_flops_per_token,
    matmul_parameters,
    model_flops_per_token,
    raw_tokens_matched_in_flops,
    steps_for_tokens,
    tokens_for_steps,
    training_flops_per_token,
)
from latent_thoughts.train.config import (
    BudgetConfig,
    DataConfig,
    ModelConfig,
    OptimConfig,
    SourceConfig,
    TrainConfig,
    load_train_config,
)
from latent_thoughts.train.trainer import NonFiniteLossError, TrainResult, train

__all__ = [
    "BudgetConfig",
    "DataConfig",
    "ModelConfig",
    "NonFiniteLossError",
    "OptimConfig",
    "SourceConfig",
    "TrainConfig",
    "TrainResult",
    "epochs_for_budget",
    "estep_flops",
    "forward_flops_per_token",
    "load_train_config",
    "matmul_parameters",
    "model_flops_per_token",
    "raw_tokens_matched_in_flops",
    "steps_for_tokens",
    "tokens_for_steps",
    "train",
    "training_flops_per_token",
]
