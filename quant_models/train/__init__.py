"""Training: staged block-wise distillation of W1A1 students from FP teachers.

``train(load_config("configs/fmnist_si_resnet.yaml"))`` is the library call; ``sibnn-train`` the CLI.
"""

from .config import DataConfig, LossWeights, Stage, TrainConfig, build_config, load_config
from .evaluation import evaluate
from .loop import train

__all__ = ["DataConfig", "LossWeights", "Stage", "TrainConfig", "build_config", "evaluate",
           "load_config", "train"]
