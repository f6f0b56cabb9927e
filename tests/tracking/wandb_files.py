"""Read W&B offline run files (`run-<id>.wandb`) back, with wandb's own record definitions.

A `.wandb` file is a LevelDB-style log (wandb's "datastore" format): a 7-byte header (`:W&B`, magic
0xBEE1, version 0), then 32 KiB blocks of chunks, each with a CRC-32 of its type and data, a length and a
type (full / first / middle / last). Every record is a `wandb.proto.wandb_internal_pb2.Record`. wandb
0.31 ships no Python reader (its datastore moved into the Go `wandb-core`), so this is that reader.
"""

from __future__ import annotations

import json
import struct
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from wandb.proto import wandb_internal_pb2 as pb

HEADER = struct.Struct("<4sHB")
CHUNK = struct.Struct("<IHB")
BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list[pb.Record]:
    data = Path(path).read_bytes()
    ident, magic, version = HEADER.unpack_from(data)
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0), f"{path}: not a W&B datastore file"
    out, pending, pos = [], None, HEADER.size
    while pos + CHUNK.size <= len(data):
        left = BLOCK - pos % BLOCK
        if left < CHUNK.size:  # the rest of a block too small for a chunk header is padding
            pos += left
            continue
        crc, length, kind = CHUNK.unpack_from(data, pos)
        if (crc, length, kind) == (0, 0, 0):  # zero padding up to the end of the block
            pos += left
            continue
        chunk = data[pos + CHUNK.size: pos + CHUNK.size + length]
        assert len(chunk) == length, f"{path}: truncated record at byte {pos}"
        assert zlib.crc32(chunk, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF == crc, f"{path}: bad checksum at {pos}"
        pos += CHUNK.size + length
        if kind == FULL:
            out.append(chunk)
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            out.append(pending + chunk)
            pending = None
    parsed = []
    for raw in out:
        record = pb.Record()
        record.ParseFromString(raw)
        parsed.append(record)
    return parsed


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


@dataclass
class OfflineRun:
    folder: Path
    run_id: str = ""
    project: str = ""
    group: str = ""
    job_type: str = ""
    config: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)  # one dict per logged step, `_step` included
    summary: dict = field(default_factory=dict)
    exit_code: int | None = None


def finished_records(folder: Path, timeout: float = 60.0) -> list[pb.Record]:
    """The records of a finished run. wandb-core writes the file from its own process and may close it a
    moment after `run.finish()` returns, so wait (bounded) for the final `exit` record."""
    deadline = time.monotonic() + timeout
    while True:
        paths = list(Path(folder).glob("run-*.wandb"))
        late = time.monotonic() > deadline
        try:
            found = records(paths[0]) if len(paths) == 1 and paths[0].stat().st_size > HEADER.size else []
        except AssertionError:  # caught mid-write: a chunk not complete yet
            if late:
                raise
            found = []
        if any(r.WhichOneof("record_type") == "exit" for r in found) or late:
            assert len(paths) == 1, f"{folder}: expected one .wandb file, found {paths}"
            return found
        time.sleep(0.1)


def read_run(folder: Path) -> OfflineRun:
    """The run recorded in one `offline-run-*` folder: identity, config, history and final summary."""
    run = OfflineRun(folder=Path(folder))
    for record in finished_records(folder):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run.run_id, run.project, run.group, run.job_type = r.run_id, r.project, r.run_group, r.job_type
            for item in r.config.update:
                run.config[_key(item)] = json.loads(item.value_json)
        elif kind == "config":
            for item in record.config.update:
                run.config[_key(item)] = json.loads(item.value_json)
        elif kind == "history":
            row = {_key(item): json.loads(item.value_json) for item in record.history.item}
            run.history.append(row)
        elif kind == "summary":
            for item in record.summary.update:
                keys = [item.key] if item.key else list(item.nested_key)
                target = run.summary
                for part in keys[:-1]:
                    target = target.setdefault(part, {})
                target[keys[-1]] = json.loads(item.value_json)
        elif kind == "exit":
            run.exit_code = record.exit.exit_code
    run.config.pop("_wandb", None)
    return run
