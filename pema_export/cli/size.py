"""``pema-export size BUNDLE_DIR``: where a bundle's bytes go."""

from __future__ import annotations

import argparse
import json
from typing import Sequence

from pema_export.cli.options import Parser


def parser() -> argparse.ArgumentParser:
    parser = Parser(prog="pema-export size", description="Where a bundle's bytes go: per file and per model part.")
    parser.add_argument("bundle", metavar="BUNDLE_DIR")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--plot", metavar="OUT.png", help="also draw the breakdown (and the vocabulary coverage curve)")
    return parser


def run(argv: Sequence[str]) -> int:
    from pema_export.size import bundle_report, render_table

    args = parser().parse_args(argv)
    if args.plot:
        from pema_export.size_plot import check_plot_path, plot_report

        check_plot_path(args.plot)
    report = bundle_report(args.bundle)
    if args.plot:
        plot_report(report, args.plot)
    print(json.dumps(report.to_json(), indent=2) if args.json else render_table(report))
    return 0
