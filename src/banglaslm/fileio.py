"""Crash-safe writes: a file or a whole folder is built under a temporary name beside its
target and renamed into place, so a reader (or a run resumed after `kill -9`) sees the old
version or the new one, never half of one (`os.replace` is atomic on POSIX). One writer at a
time: `exclusive` locks what a command writes, and clears what a killed writer left behind.
"""

from __future__ import annotations

import bz2
import codecs
import errno
import glob
import gzip
import io
import json
import lzma
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from .errors import UserError, wrong_kind

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None


def as_path(value: object, param: str, what: str) -> Path:
    """`value` (a str or os.PathLike) as a Path; UserError naming `param` for anything else, such as
    None or a loaded model where its folder's path goes."""
    if isinstance(value, (str, os.PathLike)):
        return Path(value)
    raise wrong_kind(param, value, f"{what}'s path (str or Path)")


def umask() -> int:
    """The process's file-creation mask (reading it means setting it; it is set back at once)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path to write; on success it replaces `path`, on error it is removed.

    The temp path lies in a temporary folder `.NAME.*.tmp` beside `path`, so that the temp
    files of a writer that is atomic in its own way (safetensors writes `.tmpXXXXXX` beside the
    path it is given, then renames it) are in that folder too: after a `kill -9`, removing the
    folder (`remove_leftovers`) removes them all, a checkpoint's size each."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    tmp_path = folder / path.name
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~umask())  # safetensors' writer makes 0600; give the usual permissions
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _fsync_dir(directory: Path) -> None:
    # The rename itself lives in the directory entry; sync it so it survives power loss.
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


def check_writable(out: Path, what: str = "output") -> None:
    """UserError unless `out` (or the folder that would hold it) can be written by this process."""
    existing = next(p for p in (out, *out.parents) if p.exists())
    if existing == out and out.is_file():
        existing = out.parent  # a file is replaced through its folder
    elif not existing.is_dir():
        raise UserError(f"cannot write {out}: {existing} is a file, not a folder; choose another {what} path")
    if not os.access(existing, os.W_OK | os.X_OK):
        read_only = hasattr(os, "statvfs") and os.statvfs(existing).f_flag & os.ST_RDONLY
        why = "is on a read-only file system" if read_only else "is not writable by this user"
        raise UserError(f"cannot write {out}: {existing} {why}; choose another {what} path")


def check_destination(out: Path, what: str = "output", replaceable: Callable[[Path], bool] | None = None,
                      overwrite: bool = True, earlier: str = "replaced") -> None:
    """UserError unless `out` is writable and new, an empty folder, or a folder `replaceable`
    accepts (an earlier output of the same kind) while `overwrite` allows replacing one;
    `earlier`: what becomes of such a folder, as the refusal of another folder says."""
    check_writable(out, what)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a folder; choose another {what} path")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if replaceable is not None and replaceable(out):
        if overwrite:
            return
        raise UserError(f"{out} is an earlier {what}; choose another {what}, or add `overwrite` to replace it")
    if replaceable is None:
        raise UserError(f"{out} already exists and is not empty; choose another {what} or delete it")
    raise UserError(f"{out} is a non-empty folder that is not a banglaslm {what} (or holds other files too); "
                    f"choose another {what}" + (f" (an earlier {what} there would be {earlier})" if overwrite else ""))


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        return f"pid {info['pid']} on {info['host']}, `{info['command']}`, since {info['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has just started"


@contextmanager
def exclusive(target: str | Path, what: str = "output") -> Iterator[None]:
    """Hold the one writer's lock on `target` (a folder or file a command writes) while the block
    runs: a second writer gets a UserError naming the holder. The lock is an flock on a sibling
    `.{name}.lock`, so a killed holder's lock is free again at once (and the file is reused)."""
    if fcntl is None:  # no flock (Windows): writers are not kept apart
        yield
        return
    target = Path(target).resolve()
    check_writable(target, what)
    target.parent.mkdir(parents=True, exist_ok=True)
    path = target.parent / f".{target.name}.lock"
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~umask())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise UserError(f"{target} is being written by another banglaslm process ({_holder(path)}); "
                            f"wait for it to finish or choose another {what}") from None
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                break  # still the file at `path` (the last holder may have removed it meanwhile)
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv)[:200],
                "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(info).encode())
        remove_leftovers(target)
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)


def is_writer_file(path: Path) -> bool:
    """A lock (`exclusive`) or temporary file or folder (`atomic_path`) a writer keeps beside its output."""
    return path.name.startswith(".") and path.suffix in (".lock", ".tmp")


def remove_leftovers(target: Path) -> None:
    """Remove what a killed writer of `target` left beside it (temporary and replaced copies);
    call only while holding `exclusive(target)`."""
    for leftover in target.parent.glob(f".{glob.escape(target.name)}.*"):
        if leftover.suffix in (".tmp", ".old"):
            shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink(missing_ok=True)


def check_not_cwd(out: Path, what: str) -> None:
    """UserError when `out` is the current folder or holds it: a folder replaced whole cannot be."""
    if Path.cwd() == Path(out).resolve() or Path(out).resolve() in Path.cwd().parents:
        raise UserError(f"{out} is the current folder or holds it; write the {what} into a folder of its own")


@contextmanager
def staged_folder(out_dir: str | Path, what: str = "output",
                  replaceable: Callable[[Path], bool] | None = None, overwrite: bool = True) -> Iterator[Path]:
    """Yield an empty temp folder beside `out_dir`; on success it becomes `out_dir`, on error
    it is removed. An existing `out_dir` must be empty, or a folder `replaceable` accepts
    (e.g. an earlier output of the same kind) while `overwrite` allows, which is then replaced
    as a whole; anything else is a UserError before any work is done."""
    out = Path(out_dir)
    check_not_cwd(out, what)
    with exclusive(out, what):
        check_destination(out, what, replaceable, overwrite)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
        try:
            yield tmp
            os.chmod(tmp, 0o777 & ~umask())  # mkdtemp makes 0700
            swap_in(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def swap_in(tmp: Path, out: Path) -> None:
    """Rename `tmp` to `out`; an existing `out` is moved aside first and removed after."""
    old = None
    try:
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, old / "previous")
        try:
            os.replace(tmp, out)
        except BaseException:
            if old is not None:
                os.replace(old / "previous", out)
            raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def atomic_copy(src: str | Path, dst: str | Path) -> None:
    """Copy `src` to `dst` so that `dst` is always either its old content or a full copy. A
    full disk's OSError names `dst` (copyfile's names `src`, which was read well)."""
    with atomic_path(dst) as tmp:
        try:
            shutil.copyfile(src, tmp)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise
            raise OSError(exc.errno, exc.strerror, str(dst)) from None


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_safetensors(path: str | Path, tensors: dict, metadata: dict[str, str] | None = None) -> None:
    """`tensors` (name -> torch tensor) as a safetensors file at `path`, written atomically; the
    library's I/O errors (a full disk, which it reports as its own error type) as OSError."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        try:
            save_file(tensors, str(tmp), metadata=metadata)
        except SafetensorError as exc:
            found = re.search(r"os error (\d+)", str(exc))
            if not found:
                raise
            code = int(found.group(1))
            raise OSError(code, os.strerror(code), str(path)) from None


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, ensure_ascii=False, indent=2) + "\n")


def json_line(record: Any) -> str:
    """`record` as one line of JSON Lines, its text as is; a record holding a lone surrogate
    (JSON's "\\ud800", half of a character, which UTF-8 cannot write) has its text escaped, so
    what was read is written back unchanged."""
    line = json.dumps(record, ensure_ascii=False)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        line = json.dumps(record)
    return line + "\n"


# Byte-order marks and the encodings they announce; UTF-32's are checked before UTF-16's,
# whose little-endian mark they start with. Without a mark, a file is read as UTF-8.
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


# Compressed inputs are read through the standard library (and `zstandard` for .zst), chosen by
# the file name's last suffix: corpora are shipped as .jsonl.gz, .txt.xz, .jsonl.zst.
COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst")


def compression(path: str | Path) -> str | None:
    """The compression suffix `path` ends with (".gz", ".bz2", ".xz", ".zst"), or None."""
    suffix = Path(path).suffix.lower()
    return suffix if suffix in COMPRESSIONS else None


def open_binary(path: str | Path) -> BinaryIO:
    """A file's bytes, decompressed when its name says it is compressed. Reading a damaged
    compressed file raises one of `DECOMPRESSION_ERRORS`."""
    kind = compression(path)
    if kind and os.path.getsize(path) == 0:  # an empty file, as gzip and zstd read one (bz2 and xz said "damaged")
        return open(path, "rb")
    if kind == ".gz":
        return gzip.open(path, "rb")
    if kind == ".bz2":
        return bz2.open(path, "rb")
    if kind == ".xz":
        return lzma.open(path, "rb")
    if kind == ".zst":
        return io.BufferedReader(_ZstdFrames(path))
    return open(path, "rb")


class _ZstdFrames(io.RawIOBase):
    """The decompressed bytes of a .zst file, frame after frame. zstandard's own readers return
    a truncated file's bytes without a word (a cut download read as empty), so this one raises
    EOFError when the file ends inside a frame, as gzip, bz2 and lzma do."""

    def __init__(self, path: str | Path):
        import zstandard  # a dependency; imported here so that other commands do not load it

        self._new = zstandard.ZstdDecompressor().decompressobj
        self._file = open(path, "rb")
        self._frame = self._new()
        self._pending = b""
        self._inside = False  # whether a frame has started and not ended

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._pending:
            chunk = self._frame.unused_data or self._file.read(1 << 16)
            if self._frame.eof:
                self._frame, self._inside = self._new(), False
            if not chunk:
                if self._inside:
                    raise EOFError("compressed file ended before the end of its last frame")
                return 0
            self._inside = True
            self._pending = self._frame.decompress(chunk)
        n = min(len(buffer), len(self._pending))
        buffer[:n], self._pending = self._pending[:n], self._pending[n:]
        return n

    def close(self) -> None:
        self._file.close()
        super().close()


# What a truncated or corrupt compressed file raises while it is read (gzip's BadGzipFile is an
# OSError; zstandard's ZstdError is a plain Exception, matched by name in `decompressing`).
DECOMPRESSION_ERRORS = (EOFError, OSError, lzma.LZMAError)


@contextmanager
def decompressing(path: str | Path) -> Iterator[None]:
    """Report a compressed `path` that fails to decompress, inside the block, as a UserError."""
    try:
        yield
    except UserError:
        raise
    except Exception as exc:
        if compression(path) and (isinstance(exc, DECOMPRESSION_ERRORS) or type(exc).__name__ == "ZstdError"):
            raise UserError(f"{path} could not be decompressed ({exc}); the file is damaged or not what its "
                            "name says") from None
        raise


def read_bytes(path: str | Path) -> bytes:
    """A whole file's bytes, decompressed as `open_binary` does; UserError when that fails."""
    with decompressing(path), open_binary(path) as fh:
        return fh.read()


def bom_encoding(head: bytes) -> str:
    """The encoding a text's first bytes announce by a byte-order mark (UTF-8, UTF-16 as Windows
    Notepad saves "Unicode", UTF-32), else UTF-8."""
    return next((encoding for bom, encoding in _BOMS if head.startswith(bom)), "utf-8")


def text_encoding(path: str | Path) -> str:
    """How a text file people made is encoded (`bom_encoding` of its first bytes). Every reader
    of text files uses this."""
    with open_binary(path) as fh:
        return bom_encoding(fh.read(4))


def open_text(path: str | Path, newline: str | None = None) -> TextIO:
    """A text file opened for reading in its own encoding (`text_encoding`), decompressed if
    its name ends in .gz/.bz2/.xz/.zst; with the default `newline`, CRLF and lone CR line ends
    read as "\\n"."""
    return io.TextIOWrapper(open_binary(path), encoding=text_encoding(path), newline=newline)


def read_text(path: str | Path) -> str:
    """A whole text file as `open_text` reads it; UnicodeDecodeError when it is not that encoding."""
    with open_text(path) as fh:
        return fh.read()


def read_json(path: str | Path) -> Any:
    return json.loads(read_text(path))


def read_json_or_fail(path: str | Path) -> Any:
    """`read_json`, with unreadable JSON reported as a one-line user error."""
    try:
        return read_json(path)
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not valid JSON ({exc})") from None
