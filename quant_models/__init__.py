"""sibnn model zoo: W1A1 SI-ResNets, their FP teacher twins, quantizers and checkpoints."""

from sibnn_base.errors import (
    CheckpointError,
    ConfigError,
    SibnnError,
    UnknownModelError,
    UserError,
    VerificationError,
)

from .checkpoint import load_checkpoint, save_checkpoint
from .networks import NetSpec, SIResNet, TapOutputs
from .registry import (
    TEACHER_OF,
    build_model,
    list_models,
    model_from_checkpoint,
    register_model,
    resolve_spec,
)

__all__ = [
    "CheckpointError", "ConfigError", "NetSpec", "SIResNet", "SibnnError", "TEACHER_OF",
    "TapOutputs", "UnknownModelError", "UserError", "VerificationError", "build_model",
    "list_models", "load_checkpoint", "model_from_checkpoint", "register_model", "resolve_spec",
    "save_checkpoint",
]
