"""The Arm Ethos-U NPU target of the export.

* :mod:`~keras_shufflenet.micro.npu.vela`: Vela's compilation and estimates,
  and the ``ethos_u/`` firmware files;
* :mod:`~keras_shufflenet.micro.npu.graph`: bit-exact rewrites of the int8
  flatbuffer for the NPU (grouped convolutions split per group, ...).
"""

from keras_shufflenet.micro.npu.vela import (
    ACCELERATORS,
    ETHOS_U_DIR,
    ETHOS_U_OP,
    VELA_REQUIREMENT,
    VelaLayer,
    VelaNotInstalledError,
    VelaResult,
    check_npu,
    compile_model,
    export_npu,
    markdown,
    require_vela,
    settings_header,
)

__all__ = [
    "ACCELERATORS",
    "ETHOS_U_DIR",
    "ETHOS_U_OP",
    "VELA_REQUIREMENT",
    "VelaLayer",
    "VelaNotInstalledError",
    "VelaResult",
    "check_npu",
    "compile_model",
    "export_npu",
    "markdown",
    "require_vela",
    "settings_header",
]
