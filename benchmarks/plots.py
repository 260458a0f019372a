"""Plots of cost against MACs, ShuffleNet and its peers on the same axes."""

from __future__ import annotations

import os
from typing import Any

import matplotlib

matplotlib.use("Agg")  # Files only; no display.
import matplotlib.pyplot as plt  # noqa: E402

from benchmarks.common import ModelSpec  # noqa: E402

_STYLE = {
    "shufflenet": {"color": "tab:red", "marker": "o", "label": "ShuffleNet"},
    "mobilenet": {"color": "tab:blue", "marker": "s", "label": "MobileNet"},
    "mobilenet_v2": {"color": "tab:green", "marker": "^", "label": "MobileNetV2"},
}


def _scatter(axis: Any, points: list[tuple[ModelSpec, float, float]], title: str, ylabel: str) -> None:
    seen = set()
    for spec, macs, cost in points:
        style = _STYLE[spec.family]
        label = style["label"] if spec.family not in seen else None
        seen.add(spec.family)
        axis.scatter(macs, cost, color=style["color"], marker=style["marker"], s=40, label=label)
        axis.annotate(spec.label.split(" ", 1)[1], (macs, cost), textcoords="offset points", xytext=(4, 3), fontsize=7)
    axis.set_title(title, fontsize=9)
    axis.set_xlabel("MMACs")
    axis.set_ylabel(ylabel)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)


def cost_against_macs(
    keras_results: dict[ModelSpec, dict[str, Any]] | None,
    tflite_results: dict[ModelSpec, dict[str, Any]] | None,
    tflm_results: dict[ModelSpec, Any] | None,
    path: str,
) -> str:
    """Writes one PNG with a panel per target: Keras, TFLite int8 and TFLite Micro.

    Returns:
      ``path``.
    """
    panels = []
    if keras_results:
        points = [(s, r["mmacs"], 1e3 / r["inference, batch 32"]) for s, r in keras_results.items()]
        panels.append((points, "Keras fp32, 224², batch 32", "ms per image"))
    if tflite_results:
        points = [(s, r["mmacs"], r["int8 ms"]) for s, r in tflite_results.items()]
        panels.append((points, "TFLite int8, 224², 1 thread", "ms per inference"))
        points = [(s, r["mmacs"], r["float32 ms"]) for s, r in tflite_results.items()]
        panels.append((points, "TFLite float32, 224², 1 thread", "ms per inference"))
    if tflm_results:
        points = [(s, c.macs / 1e6, c.instructions / 1e6) for s, c in tflm_results.items()]
        panels.append((points, "TFLite Micro int8, 96², 2 classes", "M instructions per inference"))
    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), squeeze=False)
    for axis, (points, title, ylabel) in zip(axes[0], panels, strict=True):
        _scatter(axis, points, title, ylabel)
    figure.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
