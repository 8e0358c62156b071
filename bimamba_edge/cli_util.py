"""What every command line shares: expected failures become one line on stderr and a non-zero exit."""

from __future__ import annotations

import os
import sys
from typing import Callable

from .errors import BimambaError


def run_main(prog: str, work: Callable[[], int]) -> int:
    try:
        return work()
    except BimambaError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
