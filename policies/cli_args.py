"""Command-line parsing shared by the policy tools (`vl_cache`, `train`) and the controller's (`controller`, `collect`, `evaluate`, `bench`)."""

from __future__ import annotations

import argparse
from typing import NoReturn


class OneLineArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line and exit 2.

    argparse's default prints the whole usage block first; the message alone
    already names the flag and the value, and tools run from scripts and CI
    logs read better with one line per error. Subcommand parsers inherit the
    class (argparse creates them with the parent's type).
    """

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")
