"""Output helpers: atomic writes (temporary name, then rename) and rank-0 printing."""
from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path
from typing import Iterator, Optional


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it to ``path`` only on success.

    A failure leaves neither a half-written ``path`` nor the temporary file.  A file gets the
    permissions of any new file (0666 less the umask), also when its writer made it private
    (safetensors writes 0600): shared results must be readable by the group that shares them.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp{os.getpid()}")
    try:
        yield tmp
        if tmp.is_file():
            os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            if tmp.is_dir():
                import shutil

                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink()


def _umask() -> int:
    """The process's file-creation mask: from /proc/self/status where there is one (reading
    it changes nothing), else by setting it and setting it back (not safe against other
    threads creating files in between)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def git_commit() -> Optional[str]:
    """The commit of the fe2nn checkout in use (for the records of a run), or None outside git."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def rank0_print(*args, comm=None, **kwargs) -> None:
    """print() on MPI rank 0 only (flushes)."""
    if comm is None:
        try:
            from mpi4py import MPI

            comm = MPI.COMM_WORLD
        except Exception:  # pragma: no cover
            comm = None
    if comm is None or comm.rank == 0:
        print(*args, **kwargs, flush=True)


def format_duration(seconds: float) -> str:
    """A wall time for progress lines: '0.08 s', '18.3 s', '4 min 05 s', '2 h 07 min'."""
    if not seconds == seconds or seconds < 0:  # NaN or negative: unknown
        return "?"
    if seconds < 10:
        return f"{seconds:.2f} s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    m = int(round(seconds)) // 60
    if m < 60:
        return f"{m} min {int(round(seconds)) % 60:02d} s"
    return f"{m // 60} h {m % 60:02d} min"


def time_left(elapsed: float, done: float, todo: float, cap: float = float("inf")) -> str:
    """', 4 min 05 s left' for ``todo`` more of work of which ``done`` took ``elapsed`` seconds (at
    that pace, at most ``cap`` seconds); '' when nothing is left or nothing is done yet."""
    if todo <= 0 or done <= 0:
        return ""
    return f", {format_duration(min(elapsed / done * todo, cap))} left"


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (plots are only written to files)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | os.PathLike, dpi: int = 110) -> None:
    """Write a matplotlib figure as PNG atomically (see :func:`atomic_path`) and close it."""
    import matplotlib.pyplot as plt

    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi)
    finally:
        plt.close(fig)


class Spool:
    """Arrays of one shape (float64), appended one after the other to an anonymous temporary file
    and read back by index: recorded fields off the memory.  The file has no name, so it goes
    with the process, a killed one too.  ``directory``: where it goes (default: the system's
    temporary directory)."""

    def __init__(self, shape: tuple, prefix: str = "fe2nn-", directory: str | os.PathLike | None = None):
        import tempfile

        import numpy as np

        self.shape = tuple(int(n) for n in shape)
        self._bytes = int(np.prod(self.shape, dtype=np.int64)) * 8
        self._file = tempfile.TemporaryFile(prefix=prefix, dir=directory)
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def append(self, a) -> None:
        """Append one array of ``shape`` or several, (n, *shape)."""
        import numpy as np

        a = np.ascontiguousarray(a, dtype=np.float64)
        n = 1 if a.shape == self.shape else a.shape[0]
        if a.shape[a.ndim - len(self.shape):] != self.shape or a.size != n * self._bytes // 8:
            raise ValueError(f"Spool of {self.shape}: got an array of shape {a.shape}")
        self._file.seek(self._n * self._bytes)
        self._file.write(a.tobytes())
        self._n += n

    def read(self, start: int, stop: int):
        """Arrays [start, stop), (stop - start, *shape)."""
        import numpy as np

        if not 0 <= start <= stop <= self._n:
            raise IndexError(f"Spool of {self._n} arrays: no [{start}, {stop})")
        out = np.empty((stop - start, *self.shape))
        self._file.seek(start * self._bytes)
        if self._file.readinto(memoryview(out).cast("B")) != out.nbytes:
            raise OSError(f"the temporary file ends before array {stop}")
        return out

    def close(self) -> None:
        self._file.close()
