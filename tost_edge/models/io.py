"""Save and load models: safetensors weights + a JSON config, and official ToST checkpoints (weights only)."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Optional

import torch

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def model_config(model) -> dict:
    if hasattr(model, "config_dict"):
        cfg = model.config_dict
    else:
        cfg = model.config if isinstance(model.config, dict) else model.config.to_dict()
    return {"name": getattr(model, "registry_name", None), "class": type(model).__name__, "config": dict(cfg)}


def save(model, directory: str | os.PathLike) -> Path:
    """Write `config.json` and `model.safetensors` into directory (created; files replaced atomically)."""
    from safetensors.torch import save_model
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=d, suffix=".tmp", delete=False) as f:
        tmp = f.name
    try:
        save_model(model, tmp)
        os.replace(tmp, d / WEIGHTS_NAME)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    (d / CONFIG_NAME).write_text(json.dumps(model_config(model), indent=2))
    return d


def load(directory: str | os.PathLike):
    """Rebuild a model saved by `save`."""
    from safetensors.torch import load_model
    from . import create
    d = Path(directory)
    name, config = _saved(d)
    model = create(name, **config)
    load_model(model, str(d / WEIGHTS_NAME), strict=True)
    return model


def _saved(directory: Path) -> tuple:
    """(registry name, constructor arguments) that save() recorded in a folder's config.json."""
    meta = json.loads((directory / CONFIG_NAME).read_text())
    name = meta.get("name")
    if not name:
        raise ValueError(f"{directory / CONFIG_NAME}: expected a registry 'name', got {name!r}")
    return name, dict(meta.get("config", {}))


def saved_config(path: str | os.PathLike, name: str) -> dict:
    """The constructor arguments a folder written by save() recorded for registry model `name` ({} for a file or a
    folder without config.json); an error where the folder holds another model."""
    if not (Path(path) / CONFIG_NAME).is_file():
        return {}
    saved, config = _saved(Path(path))
    if saved != name:
        raise ValueError(f"checkpoint {path}: {CONFIG_NAME} describes {saved!r}, not {name!r}")
    return config


def read_state_dict(path: str | os.PathLike) -> dict:
    """Read a checkpoint's tensors: safetensors (a file, or a folder written by save()), or a torch file (bare
    state dict or {'model': ...}) loaded with weights_only=True. Strips torch.compile's '_orig_mod.' and DDP's 'module.' prefixes."""
    if Path(path).is_dir():   # a folder written by save()
        if not (Path(path) / WEIGHTS_NAME).is_file():
            raise FileNotFoundError(f"{path}: a folder without {WEIGHTS_NAME} (save() writes it)")
        path = Path(path) / WEIGHTS_NAME
    path = str(path)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        sd = load_file(path)
    else:
        obj = torch.load(path, map_location="cpu", weights_only=True)
        sd = obj.get("model", obj.get("state_dict", obj)) if isinstance(obj, dict) else None
        if not isinstance(sd, dict):
            raise ValueError(f"{path}: expected a state dict or a dict with a 'model' entry, got {type(obj).__name__}")
    out = {}
    for k, v in sd.items():
        for prefix in ("_orig_mod.", "module."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def _tied(model, sd: dict) -> dict:
    """sd with every name of a set of tied parameters: safetensors writes one of them (lm_head.weight, not the
    transformer.wte.weight tied to it), and the others take its tensor."""
    names = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    for group in names.values():
        have = [n for n in group if n in sd]
        for n in group:
            if have:
                sd.setdefault(n, sd[have[0]])
    return sd


def load_checkpoint(model, path: str | os.PathLike, strict: bool = True):
    """Load an official (or our own) checkpoint into model; a mismatch names missing and unexpected keys
    and shape differences."""
    sd = _tied(model, read_state_dict(path))
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if strict and (missing or unexpected or shapes):
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:10]}{' ...' if len(missing) > 10 else ''}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''}")
        if shapes:
            parts.append("shape mismatches " + "; ".join(shapes[:10]))
        raise ValueError(f"checkpoint {path}: does not match model {getattr(model, 'registry_name', '')}: "
                         + "; ".join(parts))
    model.load_state_dict(sd, strict=strict)
    return model


def config_hash(model) -> str:
    import hashlib
    return hashlib.sha256(json.dumps(model_config(model), sort_keys=True).encode()).hexdigest()[:16]
