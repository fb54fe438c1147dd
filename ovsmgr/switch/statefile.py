"""Writing state files: atomically, durably, and never through a planted name.

Every file ovsmgr keeps (applied state, runtime changes, controller info, the
API token, rollback records, lab and bench records) is written by
`atomic_write`:

- the data goes to a fresh temporary file in the same directory, created by
  `tempfile.mkstemp` (`O_CREAT|O_EXCL`, a random name, mode 0600 until it is
  set). A file or symbolic link planted at a predictable name is never opened,
  followed or overwritten; two writers in one directory never share a
  temporary file (the old `path.with_suffix(".tmp")` gave `ovsmgr-br0.json`
  and `ovsmgr-br0.token` the same one);
- the mode is set on the open file (exactly `mode`; the umask does not apply)
  before any data is written, so a secret is never readable by others;
- fsync, then `os.replace` onto `path`, then fsync of the directory: a reader
  sees the old file or the new one, never a part, and the new one survives a
  crash once `atomic_write` returns;
- a `path` that is a symbolic link is refused (`StateFileError`). `os.replace`
  would only replace the link, not write where it points, but a link in a
  state directory is a misconfiguration or an attack, and the readers (which
  do follow links) would then disagree with what was written. The error says so.

On any failure the temporary file is removed and `path` is left as it was.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from pathlib import Path


class StateFileError(OSError):
    """A state file that is not written; an `OSError`, so callers that handle I/O errors handle it."""


def atomic_write(path: str | os.PathLike[str], data: str | bytes, mode: int = 0o644, durable: bool = True) -> None:
    """Replace `path` with `data` (str is written as UTF-8); see the module docstring. `durable=False`
    skips the fsyncs, for files whose loss in a crash costs only time (the compile cache)."""
    target = Path(path)
    _refuse_link(target)
    payload = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view):]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        _refuse_link(target)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        _sync_dir(target.parent)


def _refuse_link(path: Path) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise StateFileError(f"refusing to write {path}: it is a symbolic link (to {os.readlink(path)}); "
                             "state files must be regular files, remove the link")
    if stat.S_ISDIR(st.st_mode):
        raise StateFileError(f"refusing to write {path}: it is a directory")


def _sync_dir(directory: Path) -> None:
    """Make the rename durable; some file systems cannot open or sync a directory, which is no error."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def read_private(path: str | os.PathLike[str]) -> str | None:
    """The text of a secret file if it is a regular file only its owner can read (not through a
    symbolic link); None when it is missing or is not such a file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a symbolic link
            return None
        raise
    with os.fdopen(fd, "rb") as handle:
        st = os.fstat(handle.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_mode & 0o077:
            return None
        return handle.read(4096).decode(errors="replace")
