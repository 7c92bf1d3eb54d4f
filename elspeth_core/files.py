"""File durability helpers shared by the sinks and the export writer."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_directory(directory: Path) -> None:
    """Make a newly created or renamed file's directory entry durable.

    Best effort: a file system that cannot open or fsync a directory is left as it is (the file's
    own fsync still holds).
    """
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
