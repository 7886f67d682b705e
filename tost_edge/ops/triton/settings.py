"""The kernels' launch settings: what they are, and setting tuned ones with their names and types checked.

    from tost_edge.ops.triton import settings
    settings.current()                                   # {"tssa": {"PROGRAMS": 4096, ...}, "causal_tssa": ...}
    settings.apply("results/sweep.json")                 # its best settings, for the rest of the process
    with settings.using({"tssa": {"RESIDENT": True}}):   # only inside the block
        ...
    TOST_EDGE_TRITON_SETTINGS=results/sweep.json python train.py   # applied when the kernels are first used

A source is a `sweep.json` written by benchmarks/sweep.py (its "best" settings; its "device" is compared with the
GPU the kernels run on, and a different card is warned about once: the settings run there, but were not measured
there) or a dict {op: {SETTING: value}}. Every name and type is checked before anything is set, and all errors
are reported at once, so a file with one mistake changes nothing. The settings are module attributes of
tssa.py, causal_tssa.py and linear_attention.py (docs/training.md says what each does); setting those directly
works too, unchecked.
"""
from __future__ import annotations

import contextlib
import difflib
import importlib
import json
import os
import warnings
from pathlib import Path

ENV = "TOST_EDGE_TRITON_SETTINGS"
MODULES = {"tssa": "tssa", "causal_tssa": "causal_tssa", "causal_linear_attention": "linear_attention"}
ALIASES = {"linear_attn": "causal_linear_attention"}   # the key sweep.json files before the op's full name used
_TYPES = {"bool": bool, "int": int, "None": type(None)}

_measured_on = None   # (device name, source) of the settings applied last, where the source names its card
_checked = set()      # device indices compared with it


def _module(op: str):
    return importlib.import_module(f"{__package__}.{MODULES[op]}")


def tunable(op: str) -> dict:
    """{SETTING: the types it takes} of one op: its module's upper-case bool and int attributes; a setting whose
    default is None names its types in an annotation (`CHUNK: int | None = None`)."""
    module = _module(op)
    notes = getattr(module, "__annotations__", {})
    out = {}
    for name, value in vars(module).items():
        if not name.isupper() or name.startswith("_"):
            continue
        if name in notes:
            out[name] = tuple(_TYPES[t.strip()] for t in str(notes[name]).split("|"))
        elif type(value) in (bool, int):
            out[name] = (type(value),)
    return out


def current() -> dict:
    """{op: {SETTING: value}}: the launch settings in force now."""
    return {op: {name: getattr(_module(op), name) for name in sorted(tunable(op))} for op in MODULES}


def _read(source):
    """(table {op: {SETTING: value}}, the card it was measured on or None, a name for messages)."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"launch settings {path}: no such file")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"launch settings {path}: not JSON ({e})") from e
        origin = str(path)
    else:
        data, origin = source, "launch settings"
    if not isinstance(data, dict):
        raise ValueError(f"{origin}: expected a JSON object {{op: {{SETTING: value}}}} or a sweep.json, "
                         f"got {type(data).__name__}")
    if "best" in data:   # benchmarks/sweep.py's file
        return data["best"], data.get("device"), origin
    return data, None, origin


def _type_names(types) -> str:
    return " or ".join("None" if t is type(None) else t.__name__ for t in types)


_AUTO_ZERO = {"TILED_WARPS", "BWD_UNROLL", "CHUNKED_WARPS"}   # 0: the kernels choose


def _range_problem(name: str, value) -> str | None:
    """What is wrong with an int setting's value, where a launch would fail on it (tile shapes and warps are powers
    of two), or None."""
    if type(value) is not int:
        return None
    if value < 0:
        return "is a count"
    if value == 0 and name in _AUTO_ZERO:
        return None
    pow2 = value > 0 and value & (value - 1) == 0
    if "WARPS" in name and not (pow2 and value <= 32):
        return "takes a power of two up to 32"
    if name == "CHUNK" and not (pow2 and value >= 16):
        return "takes a power of two of at least 16"
    if name.endswith(("TILE", "UNROLL", "SPLIT")) and not pow2:
        return "takes a power of two"
    if name in ("PROGRAMS", "QUEUE_PER_SM", "QUEUE_TOKENS", "CHUNKED_TOKENS", "CHUNKED_STAGES") and value < 1:
        return "takes at least 1"
    return None


def check(source) -> tuple:
    """The checked settings of a source, ({op: {SETTING: value}}, device or None, name); ValueError listing every
    unknown op, unknown setting, wrong type and value a launch would fail on."""
    table, device, origin = _read(source)
    if not isinstance(table, dict):
        raise ValueError(f"{origin}: expected {{op: {{SETTING: value}}}}, got {type(table).__name__}")
    errors, out = [], {}
    for key, values in table.items():
        op = ALIASES.get(key, key)
        if op not in MODULES:
            errors.append(f"unknown op {key!r} (the ops: {', '.join(MODULES)})")
            continue
        if not isinstance(values, dict):
            errors.append(f"{op}: expected {{SETTING: value}}, got {values!r}")
            continue
        known = tunable(op)
        for name, value in values.items():
            if name not in known:
                near = difflib.get_close_matches(name, known, n=1)
                errors.append(f"{op}.{name} is not a launch setting (" + (f"did you mean {near[0]}?" if near else
                              f"those of {op}: {', '.join(sorted(known))}") + ")")
            elif type(value) not in known[name]:
                errors.append(f"{op}.{name} takes {_type_names(known[name])}, got {value!r} "
                              f"({type(value).__name__})")
            elif problem := _range_problem(name, value):
                errors.append(f"{op}.{name} {problem}, got {value}")
            else:
                out.setdefault(op, {})[name] = value
    if errors:
        raise ValueError(f"{origin}: " + ("; ".join(errors) if len(errors) == 1
                                          else f"{len(errors)} errors, nothing set:\n  " + "\n  ".join(errors)))
    return out, device, origin


def apply(source) -> dict:
    """Sets the settings of a source (a sweep.json path or {op: {SETTING: value}}), all of them or, where any is
    wrong, none. Returns the values they replaced, which apply() takes to restore them."""
    global _measured_on
    table, device, origin = check(source)
    previous = {op: {name: getattr(_module(op), name) for name in values} for op, values in table.items()}
    for op, values in table.items():
        for name, value in values.items():
            setattr(_module(op), name, value)
    if device is not None:
        _measured_on = (device, origin)
        _checked.clear()
    return previous


@contextlib.contextmanager
def using(source):
    """The settings of a source inside a `with` block; the ones before it afterwards, also after an error."""
    global _measured_on
    measured = _measured_on
    previous = apply(source)
    try:
        yield
    finally:
        apply(previous)
        _measured_on = measured
        _checked.clear()


def check_device(device) -> None:
    """Warns once per GPU when the settings applied last were measured on another card (called at launch)."""
    import torch
    if _measured_on is None or torch.compiler.is_compiling():   # compiled: the eager calls warn
        return
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index in _checked:
        return
    _checked.add(index)
    name = torch.cuda.get_device_name(index)
    if name != _measured_on[0]:
        warnings.warn(f"launch settings from {_measured_on[1]} were measured on {_measured_on[0]}; cuda:{index} is "
                      f"{name}: they run correctly there but may not be its fastest (benchmarks/sweep.py measures "
                      f"them on this card)", stacklevel=3)


def apply_environment() -> None:
    """Applies the file named by TOST_EDGE_TRITON_SETTINGS, if set (done when the kernels are first imported)."""
    path = os.environ.get(ENV)
    if not path:
        return
    try:
        apply(path)
    except (OSError, ValueError) as e:
        raise type(e)(f"{ENV}: {e}") from e
