"""The custom objects of a quantization-aware ShuffleNet, which tfmot needs to build, clone or load one.

Used by QAT (:mod:`keras_shufflenet.micro.fine_tuning`) and by the export
graph's clone of a QAT model (:mod:`keras_shufflenet.micro.graph`).
tensorflow-model-optimization is imported only when a scope is asked for: it
needs Keras 2, and this module loads under Keras 3 too.
"""

from __future__ import annotations

import contextlib
from typing import Any

from keras_shufflenet.layers import ChannelShuffle


class NoOpQuantizeConfig:
    """QAT config of ChannelShuffle: no fake-quant at all.

    The shuffle is a pure permutation (RESHAPE/TRANSPOSE/RESHAPE in TFLite),
    which int8 kernels run without requantizing: its output keeps its input's
    scale and zero point, so no quantizer belongs around it.
    """

    def get_weights_and_quantizers(self, layer: Any) -> list:
        return []

    def get_activations_and_quantizers(self, layer: Any) -> list:
        return []

    def set_quantize_weights(self, layer: Any, quantize_weights: list) -> None:
        pass

    def set_quantize_activations(self, layer: Any, quantize_activations: list) -> None:
        pass

    def get_output_quantizers(self, layer: Any) -> list:
        return []

    def get_config(self) -> dict:
        return {}

    @classmethod
    def from_config(cls, config: dict) -> NoOpQuantizeConfig:
        return cls()


def _quantize_config_base() -> type:
    import tensorflow_model_optimization as tfmot  # See the comment below.

    # Registered as a subclass so tfmot's isinstance checks accept it, without
    # importing tfmot when the module loads under Keras 3.
    return tfmot.quantization.keras.QuantizeConfig


def qat_scope() -> contextlib.AbstractContextManager:
    """The custom objects tfmot needs to clone or load a quantization-aware ShuffleNet."""
    import tensorflow_model_optimization as tfmot  # Keras 2 only: imported when a QAT model is built.

    _quantize_config_base().register(NoOpQuantizeConfig)
    return tfmot.quantization.keras.quantize_scope(
        {
            "NoOpQuantizeConfig": NoOpQuantizeConfig,
            "ChannelShuffle": ChannelShuffle,
        }
    )
