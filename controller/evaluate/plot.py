"""The sweep's plot: success rate against emulated VL latency, sync against async.

matplotlib with the Agg backend (no display needed), imported only when a
plot is written.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

#: Line colour and marker per VL mode.
_STYLE = {"async": ("tab:blue", "o"), "sync": ("tab:red", "s")}


def plot_sweep(cells: Sequence[Mapping[str, Any]], path: str | Path, *, title: str) -> Path:
    """Write a PNG: one line per VL mode, success rate (with its 95 % Wilson interval as
    error bars) at each VL latency. `cells` are the sweep's JSON cells."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    try:
        modes = sorted({c["vl_mode"] for c in cells})
        latencies = sorted({c["vl_latency"] for c in cells})
        span = (latencies[-1] - latencies[0]) if len(latencies) > 1 else 1.0
        for k, mode in enumerate(modes):
            rows = sorted((c for c in cells if c["vl_mode"] == mode), key=lambda c: c["vl_latency"])
            # Dodge the modes apart a little, so that equal rates do not hide each other's bars.
            shift = (k - (len(modes) - 1) / 2) * 0.012 * span
            xs = [c["vl_latency"] + shift for c in rows]
            ys = [100 * (c["summary"]["success_rate"] or 0.0) for c in rows]
            lo = [y - 100 * c["summary"]["success_ci95"][0] for y, c in zip(ys, rows, strict=True)]
            hi = [100 * c["summary"]["success_ci95"][1] - y for y, c in zip(ys, rows, strict=True)]
            colour, marker = _STYLE.get(mode, ("tab:gray", "^"))
            ax.errorbar(
                xs, ys, yerr=[lo, hi], color=colour, marker=marker, capsize=4, label=f"{mode} VL"
            )
        ax.set_xlabel("emulated VL latency (s)")
        ax.set_ylabel("success rate (%), 95 % Wilson interval")
        ax.set_ylim(-3, 103)
        ax.set_title(title, fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower left")
        fig.tight_layout()
        out = Path(path)
        fig.savefig(out, format="png")
    finally:
        plt.close(fig)
    return out
