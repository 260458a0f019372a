"""From a trained Keras ShuffleNet to verified TensorFlow Lite for Microcontrollers firmware files.

:func:`export` prunes and clusters (optional), quantizes to full int8 (post-training or
quantization-aware), converts a static batch-1 graph, verifies the int8 model
in the TFLite Micro interpreter and writes the C++ sources of ``tflm/``.

Modules, one concept each:

* :mod:`~keras_shufflenet.micro.export`: the orchestrator of the stages in
  :mod:`~keras_shufflenet.micro.export_stages`;
  :mod:`~keras_shufflenet.micro.export_config` declares its settings
  (:class:`ExportConfig`, also the trainer's flags) and
  :mod:`~keras_shufflenet.micro.options` checks what they need of the model;
* :mod:`~keras_shufflenet.micro.samples`: calibration, eval and firmware images;
* :mod:`~keras_shufflenet.micro.fine_tuning`: clustering, tfmot pruning and QAT
  (:mod:`~keras_shufflenet.micro.qat_objects`: the custom objects of a QAT model);
* :mod:`~keras_shufflenet.micro.weight_storage`: weights stored compressed
  (LUT, pruned) and decoded by TFLM's DECODE operator;
* :mod:`~keras_shufflenet.micro.graph`: the export graph (static batch 1,
  the layers TFLite should see, the ReLU move);
* :mod:`~keras_shufflenet.micro.convert`: float and int8 conversion (in a
  child process, ``convert_worker.py``, for the export), and
  :func:`~keras_shufflenet.micro.convert.deployment_model`, the graph it
  converts, for your own ``tf.lite.TFLiteConverter`` settings;
* :mod:`~keras_shufflenet.micro.flatbuffer`: reading ``.tflite`` files, and
  the table of the operators TFLM implements;
* :mod:`~keras_shufflenet.micro.compact`: the TFLM-only copy of the flatbuffer;
* :mod:`~keras_shufflenet.micro.verify` (with ``tflm_worker.py``): TFLM runs,
  bit-exactness, arena search, instruction counts;
* :mod:`~keras_shufflenet.micro.c_sources`: the C sources of ``tflm/``;
* :mod:`~keras_shufflenet.micro.report`: ``report.json`` and ``report.md``;
* :mod:`~keras_shufflenet.micro.npu`: the Arm Ethos-U NPU target (Vela's
  compilation and estimates, ``ethos_u/``), on
  :mod:`~keras_shufflenet.micro.npu.graph` (bit-exact rewrites of the int8
  flatbuffer for the NPU);
* :mod:`~keras_shufflenet.micro.firmware`: the firmware step (build, run,
  check against the host, measure, record in the run), on
  :mod:`~keras_shufflenet.micro.firmware.tflm_app` (builds ``tflm/`` for a host or
  Cortex-M target against a TFLM tree and runs it, in qemu for Cortex-M),
  :mod:`~keras_shufflenet.micro.firmware.elf_size` (flash and RAM of the ELF) and
  :mod:`~keras_shufflenet.micro.firmware.instruction_count` (instructions per
  ``Invoke()`` and per operator, from qemu's trace).
"""

from keras_shufflenet import lazy_attributes

# Public name -> the module that defines it, imported on first use: the
# training config reads weight_storage without importing TensorFlow.
_PUBLIC = {
    "Compression": "keras_shufflenet.micro.weight_storage",
    "CompressionError": "keras_shufflenet.micro.weight_storage",
    "ConversionCrashError": "keras_shufflenet.micro.convert",
    "ExportConfig": "keras_shufflenet.micro.export_config",
    "TFLMError": "keras_shufflenet.micro.verify",
    "UnsupportedOpError": "keras_shufflenet.micro.flatbuffer",
    "VerificationError": "keras_shufflenet.micro.verify",
    "deployment_model": "keras_shufflenet.micro.convert",
    "export": "keras_shufflenet.micro.export",
}
__all__ = sorted(_PUBLIC)
__getattr__, __dir__ = lazy_attributes(__name__, _PUBLIC)
