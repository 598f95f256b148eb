"""The argparse parser of the commands that are not Hydra apps (zf-tables, zf-prepare): an unknown option is
named with the closest known one, as the Hydra apps name a misspelled key."""

from __future__ import annotations

import argparse
import difflib
import re
from typing import NoReturn


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        unknown = re.match(r"unrecognized arguments: (.*)", message)
        if unknown:
            known = [option for action in self._actions for option in action.option_strings]
            hints = []
            for argument in unknown.group(1).split():
                name = argument.split("=")[0]
                close = difflib.get_close_matches(name, known, n=1, cutoff=0.6) if name.startswith("-") else []
                hints.append(f"{argument} (did you mean {close[0]}?)" if close else argument)
            message = f"unrecognized arguments: {' '.join(hints)}; options: {', '.join(sorted(set(known)))}"
        super().error(message)
