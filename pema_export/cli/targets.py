"""``pema-export targets``: the built-in target profiles."""

from __future__ import annotations

import argparse
from typing import Sequence


def run(argv: Sequence[str]) -> int:
    from pema_export.profiles import builtin_targets, load_target

    argparse.ArgumentParser(prog="pema-export targets", description="List the built-in target profiles.").parse_args(argv)
    for name in sorted(builtin_targets()):
        target = load_target(name)
        print(f"{name:10s} {target.description}")
    return 0
