"""Read what an offline W&B run logged, without a W&B account.

wandb 0.31 writes every run (online or offline) to ``run-<id>.wandb`` and ships no
Python reader for it (``wandb sync`` reads it inside the Go ``wandb-core`` binary).
The file is a LevelDB-style log (https://github.com/google/leveldb/blob/main/doc/log_format.md):

* a 7-byte file header: ``b":W&B"``, magic ``0xBEE1`` (uint16 LE), version 0 (uint8);
* 32 KiB blocks counted from the start of the file (the file header sits in block 0);
  a block's last < 7 bytes are zero padding, since a record header never straddles blocks;
* records: crc32 (uint32 LE, zlib/IEEE crc32 of the type byte + data) | length (uint16 LE) |
  type (uint8: FULL=1, FIRST=2, MIDDLE=3, LAST=4) | data; a payload bigger than what is
  left of a block is split into FIRST, MIDDLE..., LAST chunks;
* each payload is a serialized ``wandb.proto.wandb_internal_pb2.Record``.
"""

from __future__ import annotations

import json
import struct
import time
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FILE_HEADER = struct.Struct("<4sHB")
FILE_IDENT, FILE_MAGIC, FILE_VERSION = b":W&B", 0xBEE1, 0
RECORD_HEADER = struct.Struct("<IHB")
BLOCK_SIZE = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


@dataclass
class OfflineRun:
    path: Path  # the run-<id>.wandb file
    run_id: str | None = None
    name: str | None = None
    group: str | None = None
    project: str | None = None
    entity: str | None = None
    config: dict[str, Any] = field(default_factory=dict)  # wandb's own "_wandb" entry left out
    summary: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)  # one dict per logged row, with "_step"
    exit_code: int | None = None  # None: the run never finished (still running, or crashed)


def find_offline_runs(root: str | Path) -> list[Path]:
    """Every ``offline-run-*`` directory below ``root``, sorted by path (so by time within one wandb dir)."""
    return sorted(p for p in Path(root).rglob("offline-run-*") if p.is_dir() and not p.is_symlink())


def read_offline_run(run_dir_or_wandb_file: str | Path) -> OfflineRun:
    """Replay the records of one run (its ``offline-run-*`` directory or its ``.wandb`` file)."""
    path = _wandb_file(Path(run_dir_or_wandb_file))
    run = OfflineRun(path=path)
    for record in iter_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            _apply_run(run, record.run)
        elif kind == "config":
            _apply_updates(run.config, record.config.update, record.config.remove)
        elif kind == "history":
            run.history.append(_items_to_dict(record.history.item))
        elif kind == "summary":
            _apply_updates(run.summary, record.summary.update, record.summary.remove)
        elif kind == "exit":
            run.exit_code = record.exit.exit_code
    run.config.pop("_wandb", None)
    return run


def read_finished_run(run_dir_or_wandb_file: str | Path, timeout: float = 30.0) -> OfflineRun:
    """``read_offline_run`` once the run's exit record is on disk.

    ``Run.finish()`` only tells wandb-core to close the run's stream, and wandb-core buffers the
    ``.wandb`` file: read right after ``finish()`` it was once seen holding just its file header
    (it is usually complete within ~1 ms).
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a half-written file is expected while waiting
                run = read_offline_run(run_dir_or_wandb_file)
            if run.exit_code is not None:
                return run
        except (ValueError, FileNotFoundError):  # not even the file header written yet
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{run_dir_or_wandb_file}: no exit record after {timeout} s")
        time.sleep(0.01)


def iter_records(path: str | Path) -> Iterator[Any]:
    """The ``Record`` protobufs of a ``.wandb`` file, in the order they were written."""
    from wandb.proto import wandb_internal_pb2

    path = Path(path)
    for offset, payload in iter_payloads(path.read_bytes(), str(path)):
        record = wandb_internal_pb2.Record()
        try:
            record.ParseFromString(payload)
        except Exception as exc:  # protobuf's DecodeError
            raise ValueError(f"{path}: record at byte {offset} is not a wandb Record: {exc}") from exc
        yield record


def iter_payloads(data: bytes, name: str = "<bytes>") -> Iterator[tuple[int, bytes]]:
    """(byte offset, payload) for each complete record of a LevelDB-style log.

    A record cut short by the end of the file (a crashed or still running writer) ends
    the scan with a warning; any other damage raises ValueError naming ``name`` and the offset.
    """
    if len(data) < FILE_HEADER.size:
        raise ValueError(f"{name}: {len(data)} bytes is too short for the {FILE_HEADER.size}-byte file header")
    ident, magic, version = FILE_HEADER.unpack_from(data)
    if (ident, magic, version) != (FILE_IDENT, FILE_MAGIC, FILE_VERSION):
        raise ValueError(f"{name}: not a wandb run file (header {data[:FILE_HEADER.size]!r} at byte 0)")

    pos = FILE_HEADER.size
    chunks: list[bytes] = []  # pieces of a FIRST..LAST record being reassembled
    chunks_start = 0
    while pos < len(data):
        left_in_block = BLOCK_SIZE - pos % BLOCK_SIZE
        if left_in_block < RECORD_HEADER.size:  # block trailer
            pos += left_in_block
            continue
        if len(data) - pos < RECORD_HEADER.size:
            _warn_truncated(name, pos)
            return
        crc, length, kind = RECORD_HEADER.unpack_from(data, pos)
        end = pos + RECORD_HEADER.size + length
        if RECORD_HEADER.size + length > left_in_block:
            raise ValueError(f"{name}: record at byte {pos} ({length} bytes) runs past the end of its block")
        if end > len(data):
            _warn_truncated(name, pos)
            return
        chunk = data[pos + RECORD_HEADER.size:end]
        if zlib.crc32(chunk, zlib.crc32(bytes([kind]))) != crc:
            raise ValueError(f"{name}: checksum mismatch in record at byte {pos}")
        if kind == FULL or kind == FIRST:
            if chunks:
                raise ValueError(f"{name}: record at byte {chunks_start} is missing its LAST part (at byte {pos})")
            if kind == FULL:
                yield pos, chunk
            else:
                chunks, chunks_start = [chunk], pos
        elif kind == MIDDLE or kind == LAST:
            if not chunks:
                raise ValueError(f"{name}: continuation record at byte {pos} has no FIRST part")
            chunks.append(chunk)
            if kind == LAST:
                yield chunks_start, b"".join(chunks)
                chunks = []
        else:
            raise ValueError(f"{name}: unknown record type {kind} at byte {pos}")
        pos = end
    if chunks:
        _warn_truncated(name, chunks_start)


def _warn_truncated(name: str, offset: int) -> None:
    warnings.warn(f"{name}: skipping the truncated last record at byte {offset}", stacklevel=3)


def _wandb_file(path: Path) -> Path:
    if path.is_file():
        return path
    files = sorted(path.glob("run-*.wandb"))
    if len(files) != 1:
        raise FileNotFoundError(f"{path}: expected one run-*.wandb file, found {len(files)}")
    return files[0]


def _apply_run(run: OfflineRun, record: Any) -> None:
    # A resumed run sends its run record again; later non-empty fields win.
    for attr, value in (("run_id", record.run_id), ("name", record.display_name), ("group", record.run_group),
                        ("project", record.project), ("entity", record.entity)):
        if value:
            setattr(run, attr, value)
    _apply_updates(run.config, record.config.update, record.config.remove)


def _apply_updates(target: dict, updates: Any, removes: Any) -> None:
    for item in updates:
        _set_nested(target, _item_keys(item), json.loads(item.value_json))
    for item in removes:
        *parents, last = _item_keys(item)
        parent = target
        for key in parents:
            parent = parent.get(key) if isinstance(parent, dict) else None
        if isinstance(parent, dict):
            parent.pop(last, None)


def _items_to_dict(items: Any) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for item in items:
        _set_nested(row, _item_keys(item), json.loads(item.value_json))
    return row


def _item_keys(item: Any) -> list[str]:
    # Items name their key either as `key` or as a path `nested_key` (["train/loss"], ["_wandb", "runtime"]).
    return list(item.nested_key) or [item.key]


def _set_nested(target: dict, keys: list[str], value: Any) -> None:
    for key in keys[:-1]:
        target = target.setdefault(key, {})
    target[keys[-1]] = value
