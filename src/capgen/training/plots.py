"""Training curves as a picture: loss (or the self-critical reward) on the left, validation CIDEr-D /
BLEU-4 on the right."""

from __future__ import annotations

from pathlib import Path


def plot_curves(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from capgen.io import atomic_path

    epochs = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    if all("train_reward" in h for h in history):  # self-critical: its loss is no cross-entropy
        a.plot(epochs, [h["train_reward"] for h in history], marker="o")
        a.set(xlabel="epoch", ylabel="mean CIDEr-D of sampled captions", title="training reward")
    else:
        a.plot(epochs, [h["train_loss"] for h in history], marker="o")
        a.set(xlabel="epoch", ylabel="train cross-entropy", title="training loss")
    for key in ("CIDEr", "BLEU-4"):
        b.plot(epochs, [h[key] for h in history], marker="o", label=key if key != "CIDEr" else "CIDEr-D")
    b.set(xlabel="epoch", title="validation")
    b.legend()
    for ax in (a, b):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
