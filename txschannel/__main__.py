"""``python -m txschannel``: command-line tools that need no reactor.

``python -m txschannel probe HOST:PORT [--servername NAME] [--cacert FILE]
[--certificate FILE [--private-key FILE] [--passphrase-file FILE]]
[--alpn PROTOCOLS]`` shakes hands once and prints the Schannel ladder; see
:mod:`txschannel.terminator.probe`. (The TLS terminator is ``twist schannel``.)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from txschannel.terminator import probe


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, not usage plus a line."""

    def error(self, message: str) -> NoReturn:
        self.exit(probe.EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Parse *argv* (default: ``sys.argv[1:]``), run the command, return its exit status."""
    # (The docstring's first line, less its reST quoting.)
    description = __doc__.splitlines()[0].replace("``", "")
    parser = _Parser(prog="python -m txschannel", description=description)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    probe_parser = commands.add_parser(
        "probe",
        help="connect, print the handshake as the Schannel ladder, the parameters and the chain",
        description="Connect to HOST:PORT, shake hands with the sans-IO ClientContext and print "
        "each initialize call, then what was negotiated and the certificate chain.",
    )
    probe.add_arguments(probe_parser)
    arguments = parser.parse_args(argv)
    if arguments.command == "probe":
        return probe.run(arguments)
    parser.error("a command is required: probe")


if __name__ == "__main__":
    sys.exit(main())
