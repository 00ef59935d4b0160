"""Command line: argument parsing only, one module per subcommand (options.py: the option groups they share).

Our errors (errors.PemaError) become one line on stderr and exit code 2.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
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
    previous = _terminate_as_interrupt()
    try:
        return command(argv[1:]) if command else export.run(argv)
    except PemaError as exc:
        print(f"pema-export: error: {_one_line(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("pema-export: interrupted; nothing was written", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `pema-export size DIR | head`: the reader stopped listening; no traceback for that
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _one_line(message: str) -> str:
    """A message quoting a corpus text or a library's own words may hold line breaks; the error stays one line."""
    lines = message.splitlines()
    return " ".join(line.strip() for line in lines) if len(lines) > 1 else message


def _terminate_as_interrupt():
    """SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C, so the staging folder is removed on the way out."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, interrupt)
