"""PNG outputs of the demo: the sample grid (one row per class) and the training curve."""

from __future__ import annotations

import torch


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def sample_grid(pixels: torch.Tensor, rows: int, path: str, title: str, row_names: list[str] | None = None,
                grey_cmap: str = "gray") -> None:
    """pixels: (rows*cols, C, S, S) 8-bit values (C = 1 grey, 3 RGB), row-major (one row per class).
    ``grey_cmap``: "gray_r" for ink values (the digits: 0 is blank paper)."""
    plt = _pyplot()
    cols = pixels.shape[0] // rows
    fig, axes = plt.subplots(rows, cols, figsize=(max(cols * 0.6, 4.0), rows * 0.6 + 0.5), squeeze=False)
    for i, ax in enumerate(axes.flat):
        img = pixels[i]
        if img.shape[0] == 1:
            ax.imshow(img[0].numpy(), cmap=grey_cmap, vmin=0, vmax=255, interpolation="nearest")
        else:
            ax.imshow(img.permute(1, 2, 0).to(torch.uint8).numpy(), interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        if i % cols == 0:
            label = row_names[i // cols] if row_names else ""
            ax.set_ylabel(label, rotation=0, labelpad=8, fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def training_curve(history: list[dict], baseline_bpd: float, path: str, best_step: int | None = None) -> None:
    """Training batch ELBO, and the held-out ELBO of the trained and the EMA weights with one
    standard error as error bars; the selected (best) evaluation marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    steps = [h["step"] for h in history if "train_bpd" in h]
    ax.plot(steps, [h["train_bpd"] for h in history if "train_bpd" in h], lw=0.8, alpha=0.6, label="train (batch ELBO)")
    evals = [h for h in history if "eval_bpd" in h]
    if evals:
        at = [h["step"] for h in evals]
        ax.errorbar(at, [h["eval_bpd"] for h in evals], yerr=[h.get("eval_se", 0) for h in evals], fmt="o-", ms=3,
                    capsize=2, label="held-out ELBO, trained weights")
        ema = [h for h in evals if "ema_eval_bpd" in h]
        if ema:
            ax.errorbar([h["step"] for h in ema], [h["ema_eval_bpd"] for h in ema],
                        yerr=[h["ema_eval_se"] for h in ema], fmt="s-", ms=3, capsize=2,
                        label="held-out ELBO, EMA weights")
        if best_step is not None:
            ax.axvline(best_step, color="g", ls=":", lw=1, label=f"best (step {best_step})")
    ax.axhline(baseline_bpd, color="k", ls="--", lw=1, label=f"per-pixel baseline ({baseline_bpd:.2f})")
    ax.set_xlabel("step")
    ax.set_ylabel("bits/dim")
    top = max([baseline_bpd * 2] + [h["eval_bpd"] for h in evals][:1])
    ax.set_ylim(0, top)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
