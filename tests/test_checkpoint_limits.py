"""Crafted checkpoints are accepted or refused within 10 s and 1 GB, with an error naming the file and tensor.

Each file is read in a child process whose address space is capped at 1 GiB
(RLIMIT_AS) and which must finish within 10 s, the reader's goal for any file
up to 100 MB.
"""

import collections
import itertools
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch_format

from keras_shufflenet.weights import CheckpointError, read_official_checkpoint

_READ = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
from keras_shufflenet.weights.reader import CheckpointError, read_checkpoint
try:
    obj = read_checkpoint(sys.argv[1])
except CheckpointError as error:
    print("refused:", error)
else:
    print("read:", type(obj).__name__)
    state = obj["state_dict"]
    if isinstance(state, list):  # The shared-reference file: both halves are one object.
        print("shared:", state[0] is state[1])
"""


def _read_bounded(path) -> str:
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-c", _READ, str(path)], capture_output=True, text=True, timeout=10, env=env
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_shared_references_stay_shared(tmp_path) -> None:
    # 437 bytes that expand to 2**40 list entries if every reference is copied.
    nested: list = []
    for _ in range(40):
        nested = [nested, nested]
    path = tmp_path / "shared.pth.tar"
    torch_format.save_zip_crafted(path, {"state_dict": nested})
    assert path.stat().st_size < 2000
    assert _read_bounded(path).splitlines() == ["read: dict", "shared: True"]


def test_an_object_that_contains_itself_or_nests_too_deep_is_refused(tmp_path) -> None:
    loop: list = []
    loop.append(loop)
    deep: list = []
    for _ in range(200):
        deep = [deep]
    for name, obj, message in (("loop", loop, "contains itself"), ("deep", deep, "nests deeper than 64 levels")):
        path = tmp_path / f"{name}.pth.tar"
        torch_format.save_zip_crafted(path, {"state_dict": {"w": obj}})
        out = _read_bounded(path)
        assert out.startswith("refused:") and message in out and str(path) in out and "state_dict/w" in out


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        (torch_format.CraftedTensor("0", 4, (-1, 4), (4, 1)), "malformed shape (-1, 4)"),
        (torch_format.CraftedTensor("0", 4, (2**40, 2**40), (2**40, 1)), "reads past the end of its storage"),
        (torch_format.CraftedTensor("0", 4, (4,), (1,), offset=-2), "malformed shape (4,), stride (1,) or offset -2"),
        (torch_format.CraftedTensor("0", 2**40, (4,), (1,)), "declares 1,099,511,627,776 elements"),
        (torch_format.CraftedTensor("0", -5, (4,), (1,)), "declares -5 elements"),
    ],
)
def test_sizes_are_checked_before_anything_is_allocated(tmp_path, tensor, message) -> None:
    path = tmp_path / "crafted.pth.tar"
    torch_format.save_zip_crafted(path, {"state_dict": collections.OrderedDict(w=tensor)}, {"0": bytes(16)})
    out = _read_bounded(path)
    assert out.startswith("refused:") and message in out and str(path) in out, out


def test_only_the_declared_bytes_of_a_storage_are_inflated(tmp_path) -> None:
    # 2 MB on disk that deflate to 2 GiB; the tensor declares 4 elements, so 16 bytes are inflated.
    path = tmp_path / "bomb.pth.tar"
    tensor = torch_format.CraftedTensor("0", 4, (4,), (1,))
    zeros = itertools.repeat(bytes(1 << 24), 128)
    torch_format.save_zip_crafted(path, {"state_dict": {"w": tensor}}, {"0": zeros}, zipfile.ZIP_DEFLATED)
    assert path.stat().st_size < 4 << 20
    assert _read_bounded(path).splitlines()[0] == "read: dict"


def test_non_finite_weights_and_negative_variances_are_refused_by_name(tmp_path) -> None:
    from test_weights import random_state

    for name, change, message in (
        ("nan", lambda value: value.__setitem__((0,) * value.ndim, np.nan), "non-finite value"),
        ("var", lambda value: value.__setitem__(0, -1.0), "negative batch-norm variance"),
    ):
        state = random_state(0.5, 3)
        key = next(k for k in state if k.endswith("running_var" if name == "var" else "weight"))
        change(state[key])
        path = tmp_path / f"{name}.pth.tar"
        torch_format.save_zip(str(path), state)
        with pytest.raises(
            CheckpointError, match=rf"{path}.*tensor '[^']*{key.split('module.')[-1]}' holds 1 {message}"
        ):
            read_official_checkpoint(path)
