"""Every file the project reads or writes goes through here, so every problem names the file.

Readers turn the raw errors of a truncated or corrupt file (``BadZipFile``,
``PytorchStreamReader``, JSON "Expecting ','", pickle errors) into a
:class:`FileProblem` that says which file, what is wrong and what to do.
Writers are atomic (a temporary file beside the target, then a rename), and
a failed write removes its temporary file; a full disk is reported as such,
with the path.
"""

from __future__ import annotations

import errno
import json
import os
import time
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

REWRITE = "delete it and rerun the job that writes it"


class FileProblem(RuntimeError):
    """A file that is missing, unreadable or malformed; the message names it and says what to do."""


def _unreadable(path: Path, what: str, error: BaseException, fix: str) -> FileProblem:
    reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
    return FileProblem(
        f"{path}: {what} cannot be read ({type(error).__name__}: {reason}); the file is truncated or corrupt: {fix}"
    )


def _exists(path: Path, what: str, fix: str) -> None:
    if not path.is_file():
        raise FileProblem(f"{path}: {what} does not exist; {fix}")


def _numpy_globals() -> list:
    """NumPy's array and scalar reconstruction, which some published checkpoints pickle beside their tensors
    (an accuracy as a NumPy scalar): data, not code, so allowed under ``weights_only``."""
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    dtypes = [type(np.dtype(name)) for name in ("float16", "float32", "float64", "int32", "int64", "bool", "uint8")]
    return [core.multiarray._reconstruct, core.multiarray.scalar, np.ndarray, np.dtype, *dtypes]


def _pytorch_format(path: Path) -> str | None:
    """ "zip" (torch.save since 1.6), "legacy" (an older torch.save's pickle), or None (not a torch file)."""
    with open(path, "rb") as handle:
        head = handle.read(4)
    if head == b"PK\x03\x04":
        return "zip"
    return "legacy" if head[:1] == b"\x80" else None


def load_torch(
    path: str | os.PathLike, what: str, map_location: Any = "cpu", fix: str = REWRITE, mmap: bool = False
) -> Any:
    """``torch.load`` of a file this project (or RepDistiller, mdistiller, torchvision) wrote, with
    ``weights_only=True``: tensors, numbers, strings, plain containers and NumPy arrays only, so a downloaded
    file cannot run code while it is read (a pickle can). A file that holds anything else is refused, saying
    why. ``mmap``: leave the tensors on disk (a cheap look at shapes; older torch files are read whole)."""
    import pickle

    import torch

    path = Path(path)
    _exists(path, what, fix)
    if path.stat().st_size == 0:
        raise FileProblem(f"{path}: {what} is an empty file (0 bytes), not a PyTorch file; {fix}")
    kind = _pytorch_format(path)
    if kind is None:
        with open(path, "rb") as handle:
            head = handle.read(16)
        raise FileProblem(f"{path}: {what} is not a file torch.save wrote (it starts with {head!r}); {fix}")
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap and kind == "zip")
    except pickle.UnpicklingError as error:
        if "weights_only" not in str(error) and "Weights only load failed" not in str(error):
            raise _unreadable(path, what, error, fix) from None
        found = next((line.strip() for line in str(error).splitlines() if "GLOBAL" in line), "")
        raise FileProblem(
            f"{path}: {what} holds Python objects beyond tensors, numbers and plain containers "
            f"({found[:160] or 'a pickled object'}); refused, because loading it would run the code "
            f"it names. Use a file that holds only a state dict (torch.save(model.state_dict(), "
            f"path)), re-saved that way from a source you trust"
        ) from None
    except (RuntimeError, EOFError, KeyError, zipfile.BadZipFile, ValueError, OSError, UnicodeDecodeError) as error:
        raise _unreadable(path, what, error, fix) from None


def load_json(path: str | os.PathLike, what: str, fix: str = REWRITE) -> Any:
    path = Path(path)
    _exists(path, what, fix)
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise _unreadable(path, what, error, fix) from None


def load_npz(path: str | os.PathLike, what: str, keys: tuple[str, ...], fix: str = REWRITE) -> dict[str, Any]:
    """The named arrays of an ``.npz`` file, read fully (so truncation shows here, not mid-training)."""
    import numpy as np

    path = Path(path)
    _exists(path, what, fix)
    try:
        with np.load(path, allow_pickle=False) as arrays:
            missing = [key for key in keys if key not in arrays.files]
            if missing:
                raise FileProblem(
                    f"{path}: {what} lacks the arrays {', '.join(missing)} "
                    f"(it holds {', '.join(arrays.files) or 'none'}); {fix}"
                )
            return {key: arrays[key] for key in keys}
    except FileProblem:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as error:
        raise _unreadable(path, what, error, fix) from None


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> None:
    """Write through ``write(handle)`` into a temporary file beside ``path``, then rename it over ``path``.

    Readers see the old file or the new one, never half of one. If writing
    fails, the temporary file is removed (a full disk is not left fuller) and
    the error names the path.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        if _no_space(error):
            raise FileProblem(
                f"no space left on {path.parent} while writing {path.name}; free some space and "
                f"rerun (nothing was overwritten)"
            ) from None
        raise


def _no_space(error: BaseException) -> bool:
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    # torch.save reports a short write from its C++ writer as a RuntimeError ("unexpected pos ...").
    text = str(error)
    return isinstance(error, RuntimeError) and ("unexpected pos" in text or "No space left" in text)


def move_aside(path: str | os.PathLike, reason: str) -> Path:
    """Keep a file that cannot be used under a new name beside it (``checkpoint.pt.corrupt-20261123-201500``)."""
    path = Path(path)
    kept = path.with_name(f"{path.name}.{reason}-{time.strftime('%Y%m%d-%H%M%S')}")
    counter = 1
    while kept.exists():
        kept = path.with_name(f"{path.name}.{reason}-{time.strftime('%Y%m%d-%H%M%S')}-{counter}")
        counter += 1
    os.replace(path, kept)
    return kept
