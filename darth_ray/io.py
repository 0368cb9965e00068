"""Writing outputs and reading inputs: the rules every command follows, and the one error type for bad input.

- Bad input stops with an InputError that names the file (and line or field, or the command-line flag) it comes
  from; the CLI prints it as one line and exits with 2. Never a silent drop, never a traceback from deep inside a
  library (`read_torch_file` turns any failure to load a torch file into one).
- Outputs are written atomically (`atomic_write_text`, `atomic_write_json`, `atomic_torch_save`,
  `atomic_write_file` for any other writer): a crash mid-write leaves either the old file or the new one, never
  half of one. They get the permissions a plain `open(path, "w")` would give: a replaced file keeps its mode, a
  new one gets 0666 minus the umask (never the temporary file's 0600, which other users of shared storage could
  not read).
- An output never overwrites an input or another command's outputs. A command that writes a directory claims it
  first (`claim_output_dir`): OUT/darth_run.json records the command, its provenance (resolved input paths, the
  source checkpoint's sha256, every setting the result depends on) and the names it writes. A directory claimed by
  another command, or an output path that is one of the inputs, is refused, with --no-resume too.
- A resume checks everything the result depends on: the recorded provenance must equal today's, otherwise the
  error names each change (`settings_changes`) and says how to go on (another --out, or --no-resume).
- These checks run before any expensive work (training, adaptation, tracking).
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import stat
from pathlib import Path
from typing import Any, Callable, Iterable


class InputError(ValueError):
    """Bad user input: always names the file (and line or field) it comes from."""

    def __init__(self, path: str | os.PathLike, message: str, line: int | None = None):
        self.path, self.message, self.line = str(path), message, line
        where = f"{path}:{line}" if line is not None else f"{path}"
        super().__init__(f"{where}: {message}")

    def __reduce__(self):  # picklable, so the error survives the trip from a Ray worker to the driver
        return (type(self), (self.path, self.message, self.line))


def atomic_write_file(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """`write(tmp)` writes the whole file at a temporary path beside `path`, which then replaces `path`. The
    temporary name ends in `path`'s suffix: writers such as cv2.VideoWriter and matplotlib choose the format by it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_temporary_file(path)
    try:
        write(str(tmp))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _new_temporary_file(path: Path) -> Path:
    """An empty file beside `path` with the mode a plain write of `path` would leave (mkstemp's would be 0600)."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)  # a plain write keeps the mode of the file it replaces
    except FileNotFoundError:
        mode = None
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp{path.suffix}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the kernel takes off the umask
        except FileExistsError:
            continue
        try:
            if mode is not None:
                os.fchmod(fd, mode)
        finally:
            os.close(fd)
        return tmp


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    return atomic_write_file(path, write)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Strict JSON (RFC 8259): a NaN or infinite number (LocA without true positives, MOTA of a class without
    ground truth) is written as null, which every JSON reader accepts."""
    return atomic_write_text(path, json.dumps(_finite(obj), indent=2, sort_keys=False, allow_nan=False) + "\n")


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    import torch

    return atomic_write_file(path, lambda tmp: torch.save(obj, tmp))


def read_torch_file(path: str | os.PathLike, map_location: Any = "cpu", weights_only: bool = True) -> Any:
    """torch.load, with any failure (missing, truncated, not a torch file, foreign objects) as one InputError."""
    import torch

    if not os.path.isfile(path):
        raise InputError(path, "no such checkpoint file")
    try:
        return torch.load(path, map_location=map_location, weights_only=weights_only)
    except Exception as e:  # noqa: BLE001 - whatever the unpickler raises, the file is not one we can use
        reason = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"  # torch's can run to 20 lines
        if "weights_only" in str(e) or "Weights only" in str(e):
            raise InputError(path, "checkpoint holds objects other than tensors, numbers, strings and containers; "
                                   f"darth_ray checkpoints load with weights_only=True ({reason})") from None
        raise InputError(path, f"not a readable torch checkpoint, truncated or not a torch file ({reason})") from None


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


RUN_MANIFEST = "darth_run.json"
RESUME_FILE = "last.pt"  # the full training state a rerun resumes from
# Directories written before darth_run.json existed, recognised by a file only that command writes.
_LEGACY_MARKERS = {"train_log.jsonl": "train-source", "adapt_log.jsonl": "adapt"}


def require_directory(path: str | os.PathLike, flag: str = "--out") -> None:
    """An output directory may be absent, never an existing file."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise InputError(path, f"{flag} names an existing file; it must be a directory")


def claim_output_dir(out_dir: str | os.PathLike, command: str, provenance: dict, outputs: Iterable[str],
                     inputs: Iterable[str | os.PathLike] = (), resume: bool = False, defaults: dict | None = None,
                     flag: str = "--out") -> bool:
    """Make `out_dir` the output directory of `command`, or refuse it (InputError) before any work is done.

    `provenance`: everything the outputs depend on (a flat JSON-able dict); `outputs`: the names `command` writes
    in `out_dir`; `inputs`: files it reads, which no output may be. Returns True when the run resumes: `resume` is
    asked for, OUT/last.pt exists and the recorded provenance equals `provenance` (keys missing from an older
    record count as their `defaults`). Otherwise the run starts over: the outputs the previous run of the same
    command recorded are removed (no stale state or log lines survive into the new run) and a new record is written.
    """
    out_dir, outputs = Path(out_dir), sorted(outputs)
    require_directory(out_dir, flag)
    owner, record = _owner(out_dir)
    if owner not in (None, command):
        raise InputError(out_dir, f"holds the outputs of `darth-ray {owner}`; {command} will not overwrite them, "
                                  f"not even with --no-resume: choose another {flag}")
    for name in outputs:
        if any(_same_file(out_dir / name, source) for source in inputs):
            raise InputError(out_dir / name, f"is an input of {command}, which would overwrite it with an output: "
                                             f"choose another {flag}")
    current = _as_read_back(provenance)
    last = out_dir / RESUME_FILE
    if resume and last.is_file():
        if record is None:
            raise InputError(last, f"has no {RUN_MANIFEST} recording the inputs and settings it was written with "
                                   "(an earlier darth_ray), so resuming it could mix two runs: use --no-resume to "
                                   f"start over, or another {flag}")
        changes = settings_changes(_as_read_back({**(defaults or {}), **record.get("provenance", {})}), current)
        if changes:
            raise InputError(out_dir / RUN_MANIFEST, f"{out_dir} holds a run with other inputs or settings "
                                                     f"({'; '.join(changes)}); resuming would mix two runs: use "
                                                     f"another {flag}, or --no-resume to start over")
        return True
    for name in (record or {}).get("outputs", outputs if owner == command else []):
        if Path(name).name != name or name in ("", ".", ".."):  # only names directly inside out_dir
            continue
        stale = out_dir / name
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale)
        else:
            stale.unlink(missing_ok=True)
    atomic_write_json(out_dir / RUN_MANIFEST, {"command": command, "provenance": current, "outputs": outputs})
    return False


def check_output_file(path: str | os.PathLike, inputs: Iterable[str | os.PathLike] = (),
                      flag: str = "--out") -> None:
    """A single output file (`evaluate --json`, `convert-mmtrack OUTPUT`): not a directory, not one of the
    command's `inputs`, not an output another command recorded in its darth_run.json."""
    path = Path(path)
    if path.is_dir():
        raise InputError(path, f"{flag} names a directory; it must be a file")
    for source in inputs:
        if _same_file(path, source):
            raise InputError(path, f"is an input of this command; {flag} would overwrite it")
    owner, record = _owner(path.parent)
    if record is not None and (path.name in record.get("outputs", []) or path.name == RUN_MANIFEST):
        raise InputError(path, f"is an output of `darth-ray {owner}`; choose another {flag}")


def _owner(out_dir: Path) -> tuple[str | None, dict | None]:
    """(the command whose outputs `out_dir` holds, its darth_run.json record or None); (None, None) if none."""
    record_file = out_dir / RUN_MANIFEST
    if record_file.is_file():
        try:
            record = json.loads(record_file.read_text())
            return str(record["command"]), record
        except (ValueError, KeyError, TypeError) as e:
            raise InputError(record_file, f"unreadable run record ({type(e).__name__}: {e}); it says which command "
                                          "wrote this directory: choose another --out") from None
    for marker, command in _LEGACY_MARKERS.items():
        if (out_dir / marker).exists():
            return command, None
    return None, None


def _as_read_back(obj: dict) -> dict:
    """`obj` as JSON reads it back (tuples become lists), so recorded and current values compare equal."""
    return json.loads(json.dumps(obj))


def _same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    return os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b)
