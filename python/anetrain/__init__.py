"""anetrain: train Llama-family language models on the Apple Neural Engine, with a CPU backend."""

__version__ = "0.1.0"

from anetrain.config import PRESETS, ModelConfig, TrainConfig, preset  # noqa: E402

__all__ = ["__version__", "ModelConfig", "TrainConfig", "PRESETS", "preset"]
