"""Reading and writing files given on the command line, carefully: nothing half-written, nothing replaced that
should not be, no input overwritten, no hang on a special file.

Writing (atomic_write) depends on what the output path names:
    nothing yet, or a regular file     a temporary file in the same folder, then one os.replace onto it: an
      (also through symbolic links)    interrupted or failed write leaves the old file (or nothing) in place. A
                                       symbolic link is followed: the file it names is replaced, the link is kept.
    /dev/stdout, /dev/stderr,          written to the process's already-open file descriptor N (POSIX), so that
      /dev/fd/N, /proc/self/fd/N       `--out /dev/stdout > file` appends to `file` as the shell's `>` set it up
    another special file (a FIFO,      opened for writing and written directly, as the shell's `>` does; never
      /dev/null, a terminal)           replaced by a regular file, never removed
    a folder                           IsADirectoryError
Reading (open_regular, check_regular): only regular files are opened, and a special file is refused from its stat
alone, before any open that could block (a FIFO with no writer) or act (a tape device).
Inputs and outputs (input_ids, same_as_input): an output that is the same file as an input (same device and inode:
the same path, a hard link or a symbolic link to it) is refused by the commands before anything is written.
"""

import errno
import os
import re
import stat
import sys
import tempfile

from .errors import RTDetrError

# /dev/stdout etc.: names of a file descriptor the process already holds (Linux, macOS, the BSDs).
_FD_ALIASES = {"/dev/stdout": 1, "/dev/stderr": 2}
_FD_PATH = re.compile(r"/(?:dev/fd|proc/self/fd)/(\d+)")


# ---------------------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------------------

def _kind(mode):
    """A special file's kind in words, from its st_mode."""
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def os_error_message(name, error, what="a file"):
    """One-line description of an OSError met while opening `name` (`what` it should be, with its article):
    "<name>: <what is wrong>; <what to do>"."""
    code = getattr(error, "errno", None)
    if code == errno.ENOENT:
        if os.path.islink(name):
            return f"{name}: a symbolic link to {os.readlink(name)!r}, which does not exist; fix or remove the link"
        return f"{name}: no such file; check the path"
    if code == errno.ELOOP:
        return f"{name}: symbolic link loop (too many levels of symbolic links); fix the links"
    if code == errno.EISDIR:
        return f"{name}: is a directory, not {what}; pass {what}"
    if code in (errno.EACCES, errno.EPERM):
        return f"{name}: permission denied; make the file readable"
    if code == errno.ENOTDIR:
        return f"{name}: a part of the path is not a folder; check the path"
    if code == errno.ENAMETOOLONG:
        return f"{name}: file name too long; check the path"
    return f"{name}: cannot open ({error.strerror or error}); check the file"


def check_regular(path, what="a file"):
    """os.stat(path) if it names a regular file (symlinks followed); else an RTDetrError saying what it is.

    Nothing is opened: a FIFO or device is refused from its stat alone. what: the file expected, with its article
    ("an image file"), for the message.
    """
    name = os.fspath(path)
    try:
        st = os.stat(name)
    except OSError as e:
        raise RTDetrError(os_error_message(name, e, what)) from None
    if stat.S_ISDIR(st.st_mode):
        raise RTDetrError(f"{name}: is a directory, not {what}; pass {what}")
    if not stat.S_ISREG(st.st_mode):
        raise RTDetrError(f"{name}: is {_kind(st.st_mode)}, not {what}; only regular files are read")
    return st


def open_regular(path, what="a file"):
    """Open a regular file for reading in binary mode; RTDetrError (one line) for anything else.

    stat first (a special file is refused without being opened), then open without blocking (O_NONBLOCK, so that a
    file swapped for a FIFO in between cannot hang the open) and check the opened file's own stat again.
    """
    name = os.fspath(path)
    check_regular(name, what)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(name, flags)
    except OSError as e:
        raise RTDetrError(os_error_message(name, e, what)) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise RTDetrError(f"{name}: is {_kind(st.st_mode)}, not {what}; only regular files are read")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


# ---------------------------------------------------------------------------------------------------------------
# Inputs and outputs
# ---------------------------------------------------------------------------------------------------------------

def file_id(path):
    """(device, inode) of the regular file `path` names (symlinks followed), or None (missing, not regular)."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISREG(st.st_mode) else None


def input_ids(paths):
    """{(device, inode): path} of the regular files among `paths`; a folder contributes the files in it."""
    ids = {}
    for path in paths:
        path = os.fspath(path)
        names = [path]
        if os.path.isdir(path):
            try:
                names = [os.path.join(path, n) for n in sorted(os.listdir(path))]
            except OSError:
                names = []
        for name in names:
            key = file_id(name)
            if key is not None and key not in ids:
                ids[key] = name
    return ids


def same_as_input(output, ids):
    """The input path that `output` is the same file as (same device and inode), or None."""
    key = file_id(output)
    return ids.get(key) if key is not None else None


# ---------------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------------

def _open_fd_alias(path):
    """The file descriptor that /dev/stdout, /dev/fd/N, /proc/self/fd/N ... name, or None (POSIX only)."""
    if os.name != "posix":
        return None
    text = os.path.normpath(os.path.abspath(path))
    if text in _FD_ALIASES:
        return _FD_ALIASES[text]
    m = _FD_PATH.fullmatch(text)
    return int(m.group(1)) if m else None


def is_special(path):
    """Whether atomic_write would write `path` directly: a file descriptor's name or an existing special file."""
    if _open_fd_alias(path) is not None:
        return True
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return False
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _content_bytes(content, suffix):
    """`content` as bytes: itself, or what the writer callable puts into a temporary file."""
    if not callable(content):
        return bytes(content)
    with tempfile.TemporaryDirectory(prefix="rtdetrv2_np-") as folder:
        tmp = os.path.join(folder, "out" + suffix)
        content(tmp)
        with open(tmp, "rb") as f:
            return f.read()


def _write_special(path, content, fd=None):
    """Write to a special file (or an open descriptor) directly: no temporary file beside it, no rename."""
    data = _content_bytes(content, os.path.splitext(path)[1])
    if fd is not None:
        for stream in (sys.stdout, sys.stderr):             # keep the order of what was printed before
            try:
                if stream is not None and stream.fileno() == fd:
                    stream.flush()
            except (AttributeError, OSError, ValueError):
                pass
        _write_all(fd, data)
        return
    with open(path, "wb") as f:                              # FIFO: blocks until a reader opens it, as `>` does
        f.write(data)


def atomic_write(path, content):
    """Write `content` to `path` without ever leaving it half-written (see the module docstring for special files).

    content: bytes, or a callable that writes the file given a temporary file's path (for writers that want a
    path, such as safetensors' save_file or matplotlib's savefig). A new file gets the mode a plain open() would
    give (mkstemp's are private); a replaced regular file keeps its mode. On any error the temporary file is
    removed and `path` is left as it was.
    """
    path = os.fspath(path)
    fd = _open_fd_alias(path)
    if fd is not None:
        return _write_special(path, content, fd)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, "is a directory", path)
    if st is not None and not stat.S_ISREG(st.st_mode):
        return _write_special(path, content)
    target = os.path.realpath(path)                          # through symbolic links: replace the file, keep links
    folder = os.path.dirname(target)
    tmp_fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.splitext(target)[1])
    try:
        if callable(content):
            os.close(tmp_fd)
            content(tmp)
        else:
            with os.fdopen(tmp_fd, "wb") as f:
                f.write(content)
        if st is not None:
            mode = stat.S_IMODE(st.st_mode)
        else:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)
