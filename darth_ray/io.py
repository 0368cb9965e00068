"""Atomic file writes and the one error type for bad input.

Every result, checkpoint and JSON file darth_ray writes goes through here, so a crash mid-write leaves either the
old file or the new one, never half of one.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable


class InputError(ValueError):
    """Bad user input: always names the file (and line or field) it comes from."""

    def __init__(self, path: str | os.PathLike, message: str, line: int | None = None):
        self.path, self.message, self.line = str(path), message, line
        where = f"{path}:{line}" if line is not None else f"{path}"
        super().__init__(f"{where}: {message}")

    def __reduce__(self):  # picklable, so the error survives the trip from a Ray worker to the driver
        return (type(self), (self.path, self.message, self.line))


def _atomic(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    return _atomic(path, write)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    import torch

    return _atomic(path, lambda tmp: torch.save(obj, tmp))


def dataclass_from_dict(cls, d):
    """Build config dataclass `cls` from a plain dict (JSON, Ray Tune): lists become tuples, unknown keys are an
    error that names them."""
    import dataclasses

    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's content, read in chunks (checkpoints can be hundreds of MB)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def settings_changes(stored: dict, current: dict) -> list[str]:
    """One line per setting that differs between a run's stored settings and today's: `name: stored -> current`."""
    unset = "(unset)"
    return [f"{key}: {stored.get(key, unset)} -> {current.get(key, unset)}"
            for key in sorted(stored.keys() | current.keys())
            if key not in stored or key not in current or stored[key] != current[key]]
