"""Writing files so that nothing is ever half-written: a temporary file in the same folder, then one rename."""

import os
import tempfile


def atomic_write(path, content):
    """Write `content` to `path` atomically: into a temporary file beside it, then os.replace onto `path`.

    content: bytes, or a callable that writes the file given the temporary file's path (for writers that want a
    path, such as safetensors' save_file or matplotlib's savefig). The file gets the mode a plain open() would
    give (mkstemp's are private). On any error the temporary file is removed and `path` is left as it was.
    """
    path = os.fspath(path)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".tmp-",
                               suffix=os.path.splitext(path)[1])
    try:
        if callable(content):
            os.close(fd)
            content(tmp)
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(content)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
