"""From a trained Keras ShuffleNet to verified TensorFlow Lite for Microcontrollers firmware files.

:func:`export` prunes (optional), quantizes to full int8 (post-training or
quantization-aware), converts a static batch-1 graph, verifies the int8 model
in the TFLite Micro interpreter and writes the C++ sources of ``tflm/``.

Modules, one concept each: :mod:`~keras_shufflenet.micro.compression`
(tfmot pruning and QAT), :mod:`~keras_shufflenet.micro.convert` (conversion
and the TFLM operator check), :mod:`~keras_shufflenet.micro.verify` (TFLM
runs, bit-exactness, arena search), :mod:`~keras_shufflenet.micro.c_sources`
(the C sources of ``tflm/``) and :mod:`~keras_shufflenet.micro.report`.
"""

from keras_shufflenet.micro.convert import UnsupportedOpError
from keras_shufflenet.micro.export import export
from keras_shufflenet.micro.verify import TFLMError, VerificationError

__all__ = ["TFLMError", "UnsupportedOpError", "VerificationError", "export"]
