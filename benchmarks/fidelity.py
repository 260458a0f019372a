"""Fidelity: MACs and parameters of every published configuration beside the published numbers.

Sources: the paper's Tables 1, 2 and 5 (Zhang et al., CVPR 2018,
arXiv:1707.01083 v2; "MFLOPs" there are mult-adds at 224x224) and the table of
the official implementation (megvii-model/ShuffleNet-Series, ShuffleNetV1),
which also publishes parameter counts. The MobileNet rows of Table 5 check
the MAC counter itself on keras.applications' MobileNet.
"""

from __future__ import annotations

import dataclasses

from benchmarks.common import ModelSpec, markdown_table, mobilenet, shufflenet
from keras_shufflenet.profiling import profile


@dataclasses.dataclass(frozen=True)
class PublishedCost:
    """One published configuration: where, what, and its MFLOPs (and params, if published)."""

    source: str
    model: ModelSpec
    mflops: float
    params_m: float | None = None


_TABLE1_MFLOPS_1X = {1: 143, 2: 140, 3: 137, 4: 133, 8: 137}
# Table 2 gives one complexity per scale, shared by all groups.
_TABLE2_MFLOPS = {1.0: 140, 0.5: 38, 0.25: 13}
_OFFICIAL = {
    # groups: {scale: (MFLOPs, params in millions)}
    3: {0.5: (38, 0.7), 1.0: (138, 1.9), 1.5: (292, 3.4), 2.0: (524, 5.4)},
    8: {0.5: (40, 1.0), 1.0: (138, 2.4), 1.5: (290, 4.3), 2.0: (522, 6.5)},
}
_TABLE5 = (
    (shufflenet(2.0, 3), 524),
    (shufflenet(1.5, 3), 292),
    (shufflenet(1.0, 8), 140),
    (shufflenet(0.5, 4), 38),
    (mobilenet(1.0), 569),
    (mobilenet(0.75), 325),
    (mobilenet(0.5), 149),
    (mobilenet(0.25), 41),
)


def published_costs() -> list[PublishedCost]:
    """Every configuration with a published complexity, in table order."""
    rows = [PublishedCost("Table 1", shufflenet(1.0, g), mflops) for g, mflops in _TABLE1_MFLOPS_1X.items()]
    rows += [
        PublishedCost("Table 2", shufflenet(scale, g), mflops)
        for scale, mflops in _TABLE2_MFLOPS.items()
        for g in _TABLE1_MFLOPS_1X
    ]
    rows += [PublishedCost("Table 5", model, mflops) for model, mflops in _TABLE5]
    rows += [
        PublishedCost("Official", shufflenet(scale, g), mflops, params)
        for g, table in _OFFICIAL.items()
        for scale, (mflops, params) in table.items()
    ]
    return rows


def run() -> tuple[str, list[dict[str, object]]]:
    """Profiles every published configuration at 224x224x3 with 1000 classes.

    Returns:
      The markdown section and one record per row (for other sections).
    """
    measured: dict[ModelSpec, tuple[int, int]] = {}
    rows = []
    records = []
    for entry in published_costs():
        if entry.model not in measured:
            cost = profile(entry.model.build())
            measured[entry.model] = (cost.macs, cost.trainable_params)
        macs, params = measured[entry.model]
        mmacs = macs / 1e6
        params_cell = "—"
        if entry.params_m is not None:
            params_cell = f"{entry.params_m:.1f} M / {params / 1e6:.2f} M ({params / 1e6 / entry.params_m:.2f})"
        rows.append(
            [
                entry.source,
                entry.model.label,
                f"{entry.mflops:g}",
                f"{mmacs:.1f}",
                f"{mmacs / entry.mflops:.3f}",
                params_cell,
                f"{params / 1e6:.3f} M",
            ]
        )
        records.append({"source": entry.source, "label": entry.model.label, "mmacs": mmacs, "published": entry.mflops})
    worst = max(abs(r["mmacs"] / r["published"] - 1) for r in records if r["source"] != "Table 2")
    worst_table2 = max(abs(r["mmacs"] / r["published"] - 1) for r in records if r["source"] == "Table 2")
    text = "\n\n".join(
        [
            "Every configuration with a published complexity, built by this package (random weights) and "
            "counted by `keras_shufflenet.profiling.profile` at 224×224×3 with 1000 classes. MACs count the "
            'convolutions and the classifier, as the papers\' "FLOPs" (mult-adds) do. Params are trainable '
            "parameters (batch norm's moving statistics excluded, as in PyTorch's count). The MobileNet rows "
            "check the counter itself on `keras.applications.MobileNet`. The paper's 0.5× *shallow* variant "
            "of Table 5 is not built (the builder follows Table 1's depth).",
            markdown_table(
                [
                    "source",
                    "model",
                    "published MFLOPs",
                    "measured MMACs",
                    "measured / published",
                    "params published / measured (measured ÷ published)",
                    "measured params",
                ],
                rows,
                align="llrrrrr",
            ),
            f"Largest relative MAC difference from a published number of Tables 1 and 5 and the official table: "
            f"{100 * worst:.1f} %. Table 2 gives one complexity per scale for all five group counts, so its rows "
            f"differ more (largest {100 * worst_table2:.1f} %, at 0.25×, where the paper gives neither the stem "
            "width nor the rounding of the channels).",
        ]
    )
    return text, records
