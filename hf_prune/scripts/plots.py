"""The plots of the fine-tune-and-prune script: the training history with every `pruning/*` metric (`kept_units.png`
comes from `hf_prune.model_card.plot_kept_units`)."""

from __future__ import annotations

import math


def plot_pruning_history(log_history: list[dict], path: str, final: dict[str, float] | None = None) -> None:
    """Training (and validation) loss and every `pruning/*` metric of `trainer.state.log_history` over the steps.

    `final` holds values after training, drawn as stars after the last step: the `pruning/*` values of the finalized
    model (one-shot methods only decide at the end, so their curves are flat until then) and the validation loss of
    the gated and the pruned model (as `loss (gated)` and `loss (pruned)`).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    # evaluations after the end of training are the script's own; they come in through `final`
    end = next((i for i, e in enumerate(log_history) if "train_runtime" in e), len(log_history))
    series: dict[str, dict[str, tuple[list, list]]] = {}
    for entry in log_history[:end]:
        if "step" not in entry:
            continue
        for key, value in entry.items():
            if key in ("loss", "eval_loss"):
                panel, label = "loss", "train" if key == "loss" else "validation"
            elif key.startswith("pruning/"):
                panel, label = key, None
            else:
                continue
            if isinstance(value, (int, float)):
                steps, values = series.setdefault(panel, {}).setdefault(label, ([], []))
                steps.append(entry["step"])
                values.append(value)
    final = dict(final or {})
    stars: dict[str, list[tuple[str, float, str]]] = {}
    for key, value in final.items():
        if key.startswith("loss ("):
            stars.setdefault("loss", []).append(
                (f"validation {key[5:]}", value, "tab:green" if "gated" in key else "tab:red")
            )
        else:
            stars.setdefault(key, []).append(("after finalize", value, "tab:red"))
    for panel in stars:
        series.setdefault(panel, {})
    panels = sorted(series, key=lambda k: (k != "loss", k))
    last_step = max((e["step"] for e in log_history if "step" in e), default=0)
    cols = max(1, min(3, len(panels)))
    rows = max(1, math.ceil(len(panels) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        for label, (steps, values) in series[panel].items():
            ax.plot(steps, values, marker="o", markersize=3, label=label)
        for label, value, color in stars.get(panel, []):
            ax.plot([last_step], [value], marker="*", markersize=12, color=color, linestyle="none", label=label)
        if len(series[panel]) + len(stars.get(panel, [])) > 1 or panel in stars:
            ax.legend(fontsize=7)
        ax.set_title(panel, fontsize=10)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    if not panels:
        axes[0, 0].text(0.5, 0.5, "nothing logged (lower --logging_steps)", ha="center", va="center")
    fig.suptitle("Fine-tuning with pruning")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
