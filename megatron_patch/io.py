"""Atomic writes: a file or directory appears under its final name only when it is complete.

Every writer of the package goes through here (checkpoint pointers, metrics, reports, data files,
exports), so a crash or a kill never leaves a half-written file that looks finished:

    with atomic_path("out/report.csv") as tmp:     # any writer: savefig, a C++ tool
        write_something(tmp)
    write_text("out/summary.md", text)
    write_json("out/result.json", obj)
    save_array("out/index.npy", array)            # NumPy .npy, readable with mmap_mode
    with atomic_dir("out/hf_model") as tmp_dir:    # a whole directory, swapped in at the end
        ...

The temporary name lives in the destination's directory (same filesystem, so the final
`os.replace` is atomic) and starts with a dot. On an exception it is removed and the previous
file under the final name, if any, is left as it was.
"""
import contextlib
import json
import os
import shutil
import tempfile
from typing import Iterator


def _fsync_file(path: str) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: str) -> None:
    """Persist a rename (POSIX: the directory entry is data of the directory)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = ".tmp") -> Iterator[str]:
    """Yield a temporary path beside `path`; rename it to `path` when the block succeeds.

    `suffix` keeps an extension some writers insist on (np.save appends ".npy" otherwise)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=suffix, dir=directory)
    os.close(fd)
    try:
        yield tmp
        _fsync_file(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs are ordinary files
        os.replace(tmp, path)
        _fsync_dir(directory)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path: str, overwrite: bool = False) -> Iterator[str]:
    """Yield a temporary directory beside `path`; it becomes `path` when the block succeeds.

    An existing `path` is an error unless it is empty or `overwrite` (then it is replaced only
    after the new one is complete)."""
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    if os.path.exists(path) and os.listdir(path) and not overwrite:
        raise FileExistsError(f"{path} already exists and is not empty; remove it or pick another")
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=parent)
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        if os.path.exists(path):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.old-", dir=parent)
            os.replace(path, os.path.join(old, "d"))
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        _fsync_dir(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str, text: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)


def write_lines(path: str, lines) -> None:
    """Rewrite a line-oriented file (e.g. JSON lines) in one atomic step."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(lines)


def write_json(path: str, obj, indent: int = 2) -> None:
    write_text(path, json.dumps(obj, indent=indent) + "\n")


def save_array(path: str, array) -> None:
    """A NumPy array as .npy at `path` (no pickled objects: safe to np.load and memory-map)."""
    import numpy as np

    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, np.asarray(array), allow_pickle=False)


def save_figure(fig, path: str, dpi: int = 120) -> None:
    """A matplotlib figure as PNG at `path`."""
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
