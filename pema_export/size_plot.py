"""Draw a size report: the bundle's bytes by part and, when the manifest has it, the vocabulary coverage curve."""

from __future__ import annotations

import os
from pathlib import Path

from pema_export.errors import OutputError
from pema_export.size import SizeReport


def check_plot_path(out: str | Path) -> Path:
    """Fail before the report is measured when ``--plot`` names a format matplotlib cannot write, or a folder that
    does not exist or cannot be written."""
    from matplotlib.backend_bases import FigureCanvasBase

    out = Path(out)
    formats = FigureCanvasBase.get_supported_filetypes()
    if out.suffix.lower().lstrip(".") not in formats:
        raise OutputError(f"--plot {out}: unknown image format {out.suffix or '(no extension)'}; use .png, .svg or .pdf")
    folder = out.parent
    if out.is_dir() or not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"--plot {out}: cannot write there" + ("" if folder.is_dir() else f" ({folder} is not a folder)"))
    return out


def plot_report(report: SizeReport, out: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on CI machines
    import matplotlib.pyplot as plt

    vocab = report.manifest.vocab if report.manifest else None
    coverage = vocab.coverage if vocab else None
    figure, axes = plt.subplots(1, 2 if coverage else 1, figsize=(12 if coverage else 7, 4.5), squeeze=False)
    parts = {name: size for name, size in report.parts().items() if size}
    deflated = report.parts(deflated=True)
    names = list(parts)[::-1]
    bars = axes[0][0]
    bars.barh(names, [parts[n] / 1e6 for n in names], color="#4477aa", label="bytes")
    bars.barh(names, [deflated[n] / 1e6 for n in names], color="#88ccee", height=0.4, label="after zip deflate")
    for row, name in enumerate(names):
        bars.text(parts[name] / 1e6, row, f" {parts[name] / 1e6:.2f} MB ({parts[name] / report.total_bytes:.0%})", va="center", fontsize=8)
    bars.set_xlabel("MB")
    bars.set_title(f"{report.bundle_dir.name}: {report.total_bytes / 1e6:.2f} MB, {report.total_deflate_bytes / 1e6:.2f} MB deflated")
    bars.legend(loc="lower right", fontsize=8)
    bars.set_xlim(0, max(parts.values()) / 1e6 * 1.35)
    if coverage:
        curve = axes[0][1]
        kept = vocab.kept
        curve.plot([k for k, _ in coverage], [share * 100 for _, share in coverage], marker=".", color="#4477aa")
        if kept:
            curve.axvline(kept, color="#cc6677", linestyle="--", label=f"kept: {kept:,} tokens")
            curve.legend(loc="lower right", fontsize=8)
        curve.set_xscale("log")
        curve.set_xlabel("vocabulary size (most frequent corpus tokens first)")
        curve.set_ylabel("% of corpus tokens covered")
        curve.set_title("vocabulary coverage")
        curve.grid(alpha=0.3)
    figure.tight_layout()
    out = Path(out)
    try:
        figure.savefig(out, dpi=110)
    except OSError as exc:
        raise OutputError(f"--plot {out}: cannot write it ({exc.strerror})") from None
    finally:
        plt.close(figure)
    return out
