"""Golden inputs/outputs in polygraphy's JSON formats, for `polygraphy run ENGINE --load-inputs ... --load-outputs ...`."""
from __future__ import annotations

from pathlib import Path
from typing import Dict

import numpy as np


def save_golden(folder: Path, graph: str, feeds: Dict[str, np.ndarray], outputs: Dict[str, np.ndarray]) -> None:
    from polygraphy.comparator import RunResults
    from polygraphy.json import save_json
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_json([feeds], str(folder / f"{graph}.inputs.json"))
    results = RunResults()
    results.add([outputs], runner_name="pytorch-fp32")
    results.save(str(folder / f"{graph}.outputs.json"))
