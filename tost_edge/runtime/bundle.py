"""A stream bundle on disk: prefill/step graphs (or engines) and the manifest that describes their I/O."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

FORMAT = "tost-edge-stream"
VERSIONS = (1,)


@dataclass
class StateTensor:
    name: str
    input: str
    output: str
    shape: list          # ["batch", ...]; "past" marks a KV cache's growing axis
    dtype: str
    grows: bool

    def empty(self, batch: int):
        import numpy as np
        shape = [batch if d == "batch" else (0 if d == "past" else int(d)) for d in self.shape]
        return np.zeros(shape, dtype=self.dtype)


@dataclass
class Bundle:
    path: Path
    manifest: dict
    state: List[StateTensor]

    @classmethod
    def load(cls, path) -> "Bundle":
        path = Path(path)
        man_path = path / "manifest.json"
        if not man_path.is_file():
            raise FileNotFoundError(f"bundle: expected a stream bundle folder with manifest.json "
                                    f"(made by `tost-edge export MODEL --graph stream -o DIR`), got {path}")
        man = json.loads(man_path.read_text())
        if man.get("format") != FORMAT or man.get("version") not in VERSIONS:
            raise ValueError(f"{man_path}: expected format {FORMAT!r} version in {VERSIONS}, "
                             f"got {man.get('format')!r} version {man.get('version')!r}")
        return cls(path, man, [StateTensor(**s) for s in man["state"]])

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def block_size(self) -> Optional[int]:
        return self.manifest["block_size"]

    @property
    def vocab_size(self) -> int:
        return self.manifest["vocab_size"]

    @property
    def data_input(self) -> str:
        return self.manifest["inputs"]["data"]

    @property
    def prefill_chunk(self) -> int:
        return int(self.manifest.get("prefill_chunk", 64))

    @property
    def config_hash(self) -> str:
        return self.manifest["model"]["config_hash"]

    @property
    def model_name(self) -> str:
        return self.manifest["model"].get("name") or self.manifest["model"]["class"]

    @property
    def grows(self) -> bool:
        return any(s.grows for s in self.state)

    def graph_file(self, graph: str) -> Path:
        return self.path / self.manifest["graphs"][graph]["file"]

    def state_bytes(self, position: int) -> int:
        """Bytes of recurrent state one stream holds at a position (a KV cache grows with it)."""
        import numpy as np
        total = 0
        for s in self.state:
            n = 1
            for d in s.shape[1:]:
                n *= position if d == "past" else int(d)
            total += n * np.dtype(s.dtype).itemsize
        return total
