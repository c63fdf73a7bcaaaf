"""Command line: ``fe2nn <command> ...`` (also ``python -m fe2nn``).

Each command lives in its own module with a ``main(argv) -> int`` function and
is imported only when used (DOLFINx and torch imports are slow).
User errors (:class:`fe2nn.errors.UserError`) become one line on stderr and a
non-zero exit status, never a traceback.
"""
from __future__ import annotations

import importlib
import sys
from contextlib import nullcontext
from typing import List, Optional

from fe2nn.errors import SolverError, UserError
from fe2nn.interrupt import Interrupted, graceful_stop

#: command -> (module, one-line description)
COMMANDS = {
    "solve": ("fe2nn.macro.run", "run a macroscale structural simulation from a TOML config"),
    "generate": ("fe2nn.data.generate", "generate an RVE training dataset (MPI-parallel, resumable)"),
    "inspect": ("fe2nn.data.inspect", "summarize a dataset (and plot it), a trained surrogate or a checkpoint"),
    "train": ("fe2nn.surrogate.train", "train a recurrent neural operator surrogate"),
    "evaluate": ("fe2nn.surrogate.evaluate", "evaluate a surrogate against a dataset"),
    "validate": ("fe2nn.validate", "run a problem with the surrogate and the full RVE and compare"),
}

#: commands whose long loops stop cleanly on SIGTERM after the load step, epoch or chunk of samples in
#: progress, with their checkpoint (or chunks) written (fe2nn.interrupt); the others end at once
STOPPABLE = ("solve", "validate", "train", "generate")


def _usage() -> str:
    lines = ["usage: fe2nn <command> [options]   (fe2nn <command> --help for details)", "", "commands:"]
    lines += [f"  {name:<10} {desc}" for name, (_, desc) in COMMANDS.items()]
    lines += ["", "  --version  print the version of fe2nn"]
    return "\n".join(lines)


def _rank() -> int:
    try:
        from mpi4py import MPI

        return MPI.COMM_WORLD.rank
    except Exception:  # pragma: no cover - mpi4py missing
        return 0


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        from fe2nn import __version__

        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"fe2nn: error: unknown command '{name}' (expected one of: {', '.join(COMMANDS)})", file=sys.stderr)
        return 2
    module_name, _ = COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
        with graceful_stop() if name in STOPPABLE else nullcontext():
            return int(module.main(rest) or 0)
    except (UserError, SolverError) as err:
        if _rank() == 0:
            print(f"fe2nn: error: {err}", file=sys.stderr)
        return err.exit_code
    except Interrupted as err:
        if _rank() == 0:
            print(f"fe2nn: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("fe2nn: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the output went into a pipe that closed early (fe2nn inspect ... | head)
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 141


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
