"""The training curves of a run as a PNG."""

from __future__ import annotations

from keras_shufflenet import run_dir


def plot_curves(history: dict[str, list[float]], path: str) -> None:
    """Plots loss and top-1 (train and eval) per epoch to a PNG, atomically."""
    import matplotlib  # The train extra, imported when a run plots (about a second).

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt  # After use("Agg"), which needs no display.

    epochs = history.get("epoch", [])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "top1"), strict=True):
        for key, label in ((metric, "train"), (f"val_{metric}", "eval")):
            points = [(e, v) for e, v in zip(epochs, history.get(key, []), strict=False) if v is not None]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel("top-1 accuracy" if metric == "top1" else "loss")
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    with run_dir.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
