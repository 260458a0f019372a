"""ExportConfig: each export setting is declared once, and reaches the flags and export() under one name."""

import dataclasses
import inspect
import subprocess
import sys

import pytest

from keras_shufflenet.micro.export_config import ExportConfig
from keras_shufflenet.micro.weight_storage import Compression
from keras_shufflenet.training import config as config_lib


def test_each_export_setting_is_one_flag_and_one_export_keyword() -> None:
    from keras_shufflenet.micro.export import export

    flag_names = [name for name, _, _ in config_lib.flag_fields()]
    parameters = inspect.signature(export).parameters
    for field in dataclasses.fields(ExportConfig):
        assert flag_names.count(field.name) == 1, field.name
        assert field.metadata["help"], field.name
        # export() takes it through `config` or `**settings`, never as a parameter of its own.
        assert field.name not in parameters, field.name
        changed = ExportConfig.from_settings(**{field.name: getattr(ExportConfig(), field.name)})
        assert changed == ExportConfig()
    assert parameters["config"].default is None
    assert parameters["settings"].kind is inspect.Parameter.VAR_KEYWORD


def test_settings_override_a_config_and_none_keeps_the_value() -> None:
    base = ExportConfig(quantize="ptq", clusters=16, name="digits")
    changed = ExportConfig.from_settings(base, clusters=8, num_eval=None, num_representative=50)
    assert (changed.name, changed.clusters, changed.num_eval, changed.representative_samples) == ("digits", 8, 1000, 50)
    assert base.clusters == 16  # Frozen: the given config is not changed.


def test_a_compression_argument_sets_the_clustering_and_storage_fields() -> None:
    compression = Compression(clusters=16, layer_clusters={"stage4": 4}, epochs=3, store="lut", index_bits=5)
    config = ExportConfig.from_settings(weight_quantization="per_tensor", compression=compression)
    assert (config.clusters, config.layer_clusters, config.cluster_epochs) == (16, "stage4:4", 3)
    assert (config.weight_storage, config.index_bits) == ("lut", 5)
    assert config.compression == compression
    assert ExportConfig.from_settings(compression={"clusters": 4}).clusters == 4
    assert ExportConfig(layer_clusters={"stage3": 8, "stage4": 4}).layer_clusters == "stage3:8,stage4:4"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"prune_sparsity": 1.0}, r"prune_sparsity must be in \[0, 1\)"),
        ({"prune_sparsity": 0.5, "prune_epochs": 0}, "prune_epochs must be >= 1 when pruning"),
        ({"name": "1model"}, "`name` must be a C identifier"),
        ({"arena_margin": 0.3}, r"arena_margin must be in \[0, 0.25\)"),
        ({"num_verify": 0}, "num_verify must be an integer >= 1"),
        ({"quantize": "int4"}, "quantize must be one of"),
        ({"no_such_setting": 1}, r"unknown export setting\(s\) \['no_such_setting'\]"),
        ({"compression": {"clusterz": 4}}, r"`compression` has unknown keys \['clusterz'\]"),
        ({"compression": "lut"}, "`compression` must be a keras_shufflenet.micro.Compression"),
        ({"clusters": 8, "quantize": "qat"}, "works with quantize='ptq' only"),
    ],
)
def test_bad_settings_are_named_before_any_work(settings: dict[str, object], message: str) -> None:
    with pytest.raises(config_lib.ConfigError, match=message):
        ExportConfig.from_settings(**settings)


def test_the_export_config_imports_no_tensorflow() -> None:
    code = "import sys, keras_shufflenet.micro.export_config; print('tensorflow' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "False"
