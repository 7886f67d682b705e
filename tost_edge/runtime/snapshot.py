"""Stream state snapshots: a versioned header, the raw fp32 state, a SHA-256 checksum, an atomic write.

Layout: b"TOSTSNAP" | u16 format version | u32 header length | header JSON | tensor bytes | sha256(all before)
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Dict, Tuple

import numpy as np

MAGIC = b"TOSTSNAP"
VERSION = 1


class SnapshotError(ValueError):
    """A snapshot that cannot be restored here (corrupted, another model, another format)."""


def write_snapshot(path, meta: dict, tensors: Dict[str, np.ndarray]) -> None:
    entries, blobs, offset = [], [], 0
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr)
        entries.append({"name": name, "shape": list(arr.shape), "dtype": arr.dtype.str, "offset": offset,
                        "nbytes": arr.nbytes})
        blobs.append(arr.tobytes())
        offset += arr.nbytes
    header = json.dumps({**meta, "tensors": entries}).encode()
    body = MAGIC + struct.pack("<HI", VERSION, len(header)) + header + b"".join(blobs)
    data = body + hashlib.sha256(body).digest()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_snapshot(path) -> Tuple[dict, Dict[str, np.ndarray]]:
    path = Path(path)
    data = path.read_bytes()
    if len(data) < len(MAGIC) + 6 + 32 or not data.startswith(MAGIC):
        raise SnapshotError(f"{path}: not a tost-edge state snapshot (expected it to start with {MAGIC!r})")
    body, digest = data[:-32], data[-32:]
    if hashlib.sha256(body).digest() != digest:
        raise SnapshotError(f"{path}: checksum mismatch, the file is corrupted or truncated")
    version, hlen = struct.unpack_from("<HI", body, len(MAGIC))
    if version != VERSION:
        raise SnapshotError(f"{path}: snapshot format version {version}, expected {VERSION}")
    start = len(MAGIC) + 6
    try:
        meta = json.loads(body[start:start + hlen])
        payload = body[start + hlen:]
        tensors = {}
        for e in meta.pop("tensors"):
            raw = payload[e["offset"]:e["offset"] + e["nbytes"]]
            tensors[e["name"]] = np.frombuffer(raw, dtype=np.dtype(e["dtype"])).reshape(e["shape"]).copy()
    except (ValueError, KeyError, TypeError) as e:
        raise SnapshotError(f"{path}: unreadable header or tensors ({e})") from e
    return meta, tensors
