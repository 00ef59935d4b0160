"""``pema-export check BUNDLE_DIR``: size budgets and growth since a baseline, for an app team's CI."""

from __future__ import annotations

import argparse
from typing import Sequence

from pema_export.cli.options import Parser


def parser() -> argparse.ArgumentParser:
    parser = Parser(prog="pema-export check", description="Fail when a bundle is over its size budget or grew since a baseline.")
    parser.add_argument("bundle", metavar="BUNDLE_DIR")
    parser.add_argument("--budget", metavar="FILE", help="pema-budget.toml (total, per-part and per-file limits)")
    parser.add_argument("--baseline", metavar="OLD_MANIFEST", help="an earlier pema-manifest.json to compare file sizes with")
    parser.add_argument("--tolerance", default="0%", help="allowed growth since the baseline (default 0%%)")
    return parser


def run(argv: Sequence[str]) -> int:
    from pema_export.budget import check_bundle, load_baseline, load_budget, parse_tolerance
    from pema_export.size import bundle_report

    args = parser().parse_args(argv)
    budget = load_budget(args.budget) if args.budget else None
    baseline = load_baseline(args.baseline) if args.baseline else None
    tolerance = parse_tolerance(args.tolerance)
    report = bundle_report(args.bundle)
    violations = check_bundle(report, budget, baseline, tolerance)
    for line in violations:
        print(f"over budget: {line}")
    if violations:
        return 1
    print(f"ok: {args.bundle} is {report.total_bytes:,} bytes ({report.total_deflate_bytes:,} deflated), within budget")
    return 0
