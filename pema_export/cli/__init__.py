"""Command line: argument parsing only, one module per subcommand (options.py: the option groups they share).

Our errors (errors.PemaError) become one line on stderr and exit code 2.
"""

from __future__ import annotations

import sys
from typing import Callable, Sequence

from pema_export.cli import check, export, scan, size, targets
from pema_export.errors import PemaError

EXIT_USAGE = 2

# Subcommands: the first word picks one; anything else is the export itself.
SUBCOMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "targets": targets.run,
    "size": size.run,
    "check": check.run,
    "scan": scan.run,
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = SUBCOMMANDS.get(argv[0]) if argv else None
    try:
        return command(argv[1:]) if command else export.run(argv)
    except PemaError as exc:
        print(f"pema-export: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("pema-export: interrupted; nothing was written", file=sys.stderr)
        return 130
