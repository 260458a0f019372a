"""The firmware step: build ``tflm/`` with an export's files for a core, run it, check it and measure it.

Modules, one concept each:

* :mod:`~keras_shufflenet.micro.firmware.step`: build, run, check against
  the host TFLM output, measure, record in the run (``make firmware``);
* :mod:`~keras_shufflenet.micro.firmware.tflm_app`: builds the application
  (``tflm/Makefile``, shipped inside the package) for a host or Cortex-M
  target against a TFLM tree, and runs it (in qemu for Cortex-M);
* :mod:`~keras_shufflenet.micro.firmware.elf_size`: flash and RAM of the ELF;
* :mod:`~keras_shufflenet.micro.firmware.instruction_count`: instructions per
  ``Invoke()`` and per operator, from qemu's trace.

Command line: ``python -m keras_shufflenet.micro.firmware --run_dir=... --target=... --kernels=...``.
"""

from keras_shufflenet.micro.firmware import step
from keras_shufflenet.micro.firmware.step import *  # noqa: F403  (the firmware step's public names)
from keras_shufflenet.micro.firmware.step import main

__all__ = [*step.__all__, "main"]
