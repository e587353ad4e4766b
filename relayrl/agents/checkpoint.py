"""Checkpoints: a directory with ``manifest.json`` and ``tensors.safetensors``. No pickle anywhere.

The trainer's state is a tree of dicts, lists, numbers, strings, numpy arrays and torch tensors. Saving
splits it: every array goes into one safetensors file under a path-like key, and the rest, with
``{"__tensor__": key}`` where an array stood, into the JSON manifest. Config values that are functions or
classes are stored as ``{"__callable__": "module:qualname"}`` and imported back on load.

A save writes a temporary directory and renames it into place, so a crash never leaves a half-written
checkpoint where a good one was.
"""

from __future__ import annotations

import glob
import importlib
import json
import os
import shutil
import tempfile
from typing import Any

import numpy as np

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TENSORS = "tensors.safetensors"


class CheckpointError(ValueError):
    """A checkpoint that cannot be restored: missing, corrupt, from another trainer or a newer format."""


# --- the tree <-> (json, tensors) split ----------------------------------------------------------------------
def split_state(tree: Any) -> tuple[Any, dict[str, np.ndarray]]:
    tensors: dict[str, np.ndarray] = {}

    def walk(node: Any, path: str) -> Any:
        if isinstance(node, dict):
            if all(isinstance(k, str) for k in node):
                return {k: walk(v, f"{path}.{k}") for k, v in node.items()}
            # JSON objects have string keys only: other keys (e.g. optimizer state's ints) go as key-value pairs.
            return {"__dict__": [[walk(k, path + ".k"), walk(v, f"{path}.{_key(k)}")] for k, v in node.items()]}
        if isinstance(node, (list, tuple)):
            return [walk(v, f"{path}.{i}") for i, v in enumerate(node)]
        if _is_tensor(node):
            arr = node.detach().cpu().numpy() if not isinstance(node, np.ndarray) else node
            key = path.lstrip(".") or "root"
            tensors[key] = np.ascontiguousarray(arr)
            return {"__tensor__": key, "__torch__": not isinstance(node, np.ndarray)}
        if isinstance(node, np.generic):
            return node.item()
        if isinstance(node, float) and not np.isfinite(node):
            return {"__float__": repr(node)}
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        if callable(node):
            return {"__callable__": callable_name(node)}
        return {"__repr__": repr(node)}

    return walk(tree, ""), tensors


def join_state(tree: Any, tensors: dict[str, np.ndarray], as_torch: bool = True) -> Any:
    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            if "__tensor__" in node:
                key = node["__tensor__"]
                if key not in tensors:
                    raise CheckpointError(f"tensor {key!r} named in the manifest is missing from {TENSORS}")
                arr = tensors[key]
                if node.get("__torch__") and as_torch:
                    import torch

                    return torch.from_numpy(arr.copy())
                return arr
            if "__dict__" in node and len(node) == 1:
                return {walk(k): walk(v) for k, v in node["__dict__"]}
            if "__callable__" in node and len(node) == 1:
                return resolve_callable(node["__callable__"])
            if "__float__" in node and len(node) == 1:
                return float(node["__float__"])
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(tree)


def callable_name(obj: Any) -> str:
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if not module or not qualname or "<lambda>" in qualname or "<locals>" in qualname:
        return f"<unrestorable {obj!r}>"
    return f"{module}:{qualname}"


def resolve_callable(name: str) -> Any:
    """Imports ``module:qualname``; a function that cannot be stored by name comes back as None."""
    if name.startswith("<unrestorable"):
        return None
    module, _, qualname = name.partition(":")
    try:
        obj = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise CheckpointError(f"cannot import {name!r} named in the checkpoint's config: {e}") from e
    return obj


def _is_tensor(x: Any) -> bool:
    if isinstance(x, np.ndarray):
        return x.dtype != object
    return type(x).__module__ == "torch" and type(x).__name__ in ("Tensor", "Parameter")


def _key(k: Any) -> str:
    return str(k).replace(".", "_")


# --- files ------------------------------------------------------------------------------------------------
def write_checkpoint(path: str, manifest: dict, state: Any) -> str:
    """Writes ``manifest`` (plain JSON) and ``state`` (any tree) atomically to directory ``path``."""
    from safetensors.numpy import save_file

    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tree, tensors = split_state(state)
    tmp = tempfile.mkdtemp(prefix=".tmp-" + os.path.basename(path) + "-", dir=parent)
    try:
        save_file(tensors, os.path.join(tmp, TENSORS))
        with open(os.path.join(tmp, MANIFEST), "w") as f:
            json.dump({**manifest, "format_version": FORMAT_VERSION, "state": tree}, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        _fsync(os.path.join(tmp, TENSORS))
        old = None
        if os.path.exists(path):
            old = path + f".old-{os.getpid()}"
            os.replace(path, old)
        os.replace(tmp, path)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def read_checkpoint(path: str) -> tuple[dict, Any]:
    """Returns ``(manifest, state)``; raises CheckpointError naming what is wrong."""
    from safetensors.numpy import load_file

    path = checkpoint_dir(path)
    manifest = read_manifest(path)
    tensors_path = os.path.join(path, TENSORS)
    if not os.path.isfile(tensors_path):
        raise CheckpointError(f"checkpoint {path} is missing {TENSORS}")
    try:
        tensors = load_file(tensors_path)
    except Exception as e:  # noqa: BLE001 - safetensors raises several types for corrupt files
        raise CheckpointError(f"checkpoint {path}: {TENSORS} is corrupt ({e})") from e
    return manifest, join_state(manifest.get("state"), tensors)


def read_manifest(path: str) -> dict:
    path = checkpoint_dir(path)
    manifest_path = os.path.join(path, MANIFEST)
    if not os.path.isfile(manifest_path):
        raise CheckpointError(f"{path} is not a relayrl checkpoint: {MANIFEST} is missing")
    try:
        with open(manifest_path) as f:
            manifest = json.load(f)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"checkpoint {path}: {MANIFEST} is not valid JSON ({e})") from e
    if not isinstance(manifest, dict) or "format_version" not in manifest or "trainer" not in manifest:
        raise CheckpointError(f"checkpoint {path}: {MANIFEST} lacks format_version or trainer")
    version = manifest["format_version"]
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {version!r}; this relayrl reads versions <= {FORMAT_VERSION}"
            " (upgrade relayrl)"
        )
    return manifest


def checkpoint_dir(path: str) -> str:
    """Accepts the checkpoint directory, a file inside it, or the Tune checkpoint directory around it."""
    path = os.path.abspath(os.path.expanduser(str(path)))
    if not os.path.exists(path):
        # A save killed between its two renames (write_checkpoint) left the previous checkpoint at path.old-PID.
        olds = sorted(glob.glob(glob.escape(path) + ".old-*"), key=os.path.getmtime)
        if olds and os.path.isfile(os.path.join(olds[-1], MANIFEST)):
            return olds[-1]
        raise CheckpointError(f"checkpoint path {path} does not exist")
    if os.path.isfile(path):
        return os.path.dirname(path)
    if not os.path.isfile(os.path.join(path, MANIFEST)) and os.path.isfile(os.path.join(path, "relayrl", MANIFEST)):
        return os.path.join(path, "relayrl")  # a Tune checkpoint directory holding ours (see tune_adapter.py)
    return path


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
