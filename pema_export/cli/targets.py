"""``pema-export targets``: the built-in target profiles."""

from __future__ import annotations

import argparse
from typing import Sequence

from pema_export.cli.options import Parser


def parser() -> argparse.ArgumentParser:
    return Parser(prog="pema-export targets", description="List the built-in target profiles.")


def run(argv: Sequence[str]) -> int:
    from pema_export.profiles import builtin_targets, load_target

    parser().parse_args(argv)
    for name in sorted(builtin_targets()):
        target = load_target(name)
        print(f"{name:10s} {target.description}")
    return 0
