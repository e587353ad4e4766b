"""Checkpoints: a directory with ``manifest.json`` and ``tensors.safetensors``. No pickle anywhere.

The trainer's state is a tree of dicts, lists, numbers, strings, numpy arrays and torch tensors. Saving
splits it: every array goes into one safetensors file under a path-like key, and the rest, with
``{"__tensor__": key}`` where an array stood, into the JSON manifest. Config values that are functions or
classes are stored as ``{"__callable__": "module:qualname"}`` and imported back on load.

Integrity. The manifest's ``files`` holds the SHA-256 and size of every other file of the checkpoint; reading
checks them before anything is parsed, so flipped or truncated bytes are a CheckpointError naming the file, not
weights that go NaN one iteration later. ``check_structure`` compares a stored state tree with the live one
(keys, list lengths, array shapes and dtypes, number types) so that a restore can check everything before it
changes anything (Trainer.restore).

Atomic saves. A save writes a temporary directory ``.tmp-NAME-PID-HOST-XXXXXXXX`` next to the checkpoint and
swaps it into place with one ``renameat2(RENAME_EXCHANGE)`` where Linux offers it, otherwise with two renames
(the previous checkpoint goes to ``NAME.old-PID-HOST`` in between, where readers look for it). A crash never
leaves a half-written checkpoint where a good one was. What killed saves leave behind (temp directories,
``.old-`` directories) is removed by the next successful save in the same parent directory -- only directories
named by this scheme, holding nothing but checkpoint files, whose process is dead (or that are over an hour
old), and never an ``.old-`` directory that is the only copy of its checkpoint.
"""

from __future__ import annotations

import glob
import hashlib
import importlib
import json
import logging
import numbers
import os
import re
import shutil
import tempfile
from typing import Any

import numpy as np

from relayrl.agents.checkpoint_files import (  # noqa: F401 - MANIFEST, TENSORS, remove_stale_dirs are public here
    _OLD_RE,
    MANIFEST,
    STALE_AFTER_S,
    TENSORS,
    _fsync,
    _host_tag,
    _move_into_place,
    _write_durably,
    remove_stale_dirs,
)

logger = logging.getLogger(__name__)

# 1: manifest + tensors. 2: the manifest's "files" holds each binary file's {"sha256", "bytes"}.
FORMAT_VERSION = 3


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
            base, n = key, len(tensors)
            while key in tensors:  # e.g. {"a.b": x} and {"a": {"b": y}}, or ids such as "p.0": both "a.b"
                key, n = f"{base}#{n}", n + 1
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


def join_state(tree: Any, tensors: dict[str, np.ndarray], as_torch: bool = True, resolve_callables: bool = True) -> Any:
    """The tree ``split_state`` split; ``resolve_callables=False`` leaves each ``{"__callable__": name}`` as it is
    (nothing imported)."""

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            if "__tensor__" in node:
                key = node["__tensor__"]
                if not isinstance(key, str) or key not in tensors:
                    raise CheckpointError(f"tensor {key!r} named in {MANIFEST} is missing from {TENSORS}")
                arr = tensors[key]
                if node.get("__torch__") and as_torch:
                    import torch

                    return torch.from_numpy(arr.copy())
                return arr
            if "__dict__" in node and len(node) == 1:
                return {walk(k): walk(v) for k, v in node["__dict__"]}
            if "__callable__" in node and len(node) == 1:
                return resolve_callable(node["__callable__"]) if resolve_callables else dict(node)
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


# --- a stored tree against the live one -------------------------------------------------------------------
def check_structure(stored: Any, live: Any, where: str, prefix: str = "", allow_missing: bool = False) -> None:
    """Raises CheckpointError unless ``stored`` has the structure of ``live`` (a state tree of this trainer).

    Dicts need the same keys, lists the same length, arrays the same shape and dtype; where ``live`` holds a
    bool, an integer (counters and indices: non-negative), a number or a string, ``stored`` must hold one too.
    ``None``, callables and other objects in ``live`` accept anything. A torch.optim state dict may hold
    state for parameters the live one has not stepped yet (torch creates it lazily): those entries are only
    checked where the live optimizer has them too. ``allow_missing`` accepts dicts that lack some of the live
    keys (older checkpoints). The message names the field as ``where.key.index``.
    """

    def fail(problem: str) -> None:
        raise CheckpointError(f"{prefix}field {where!r} {problem}")

    if _is_tensor(live):
        if not _is_tensor(stored):
            fail(f"must be an array of shape {_shape_dtype(live)}, found {_brief(stored)}")
        if _shape_dtype(stored) != _shape_dtype(live):
            fail(f"has shape {_shape_dtype(stored)}, this trainer's is {_shape_dtype(live)}")
    elif isinstance(live, dict):
        if not isinstance(stored, dict):
            fail(f"must be an object, found {_brief(stored)}")
        if set(live) == {"state", "param_groups"} and set(stored) == set(live) and isinstance(stored["state"], dict):
            # torch.optim: per-parameter state is created on the first step.
            check_structure(
                stored["param_groups"], live["param_groups"], f"{where}.param_groups", prefix, allow_missing
            )
            ids = {i for g in live["param_groups"] for i in g.get("params", [])}
            for k, v in stored["state"].items():
                if k not in ids:
                    raise CheckpointError(f"{prefix}field '{where}.state' names parameter {k!r}, which it lacks")
                if k in live["state"]:
                    check_structure(v, live["state"][k], f"{where}.state.{k}", prefix, allow_missing)
            return
        missing = [] if allow_missing else [k for k in live if k not in stored]
        extra = [k for k in stored if k not in live]
        if missing or extra:
            parts = ([f"lacks {', '.join(repr(k) for k in missing[:8])}"] if missing else []) + (
                [f"has unexpected {extra[:8]!r}"] if extra else []
            )
            fail(" and ".join(parts) + " (its keys do not match this trainer's)")
        for k, v in live.items():
            if k in stored:
                check_structure(stored[k], v, f"{where}.{k}", prefix, allow_missing)
    elif isinstance(live, (list, tuple)):
        if not isinstance(stored, (list, tuple)):
            fail(f"must be a list, found {_brief(stored)}")
        if len(stored) != len(live):
            fail(f"has {len(stored)} entries, this trainer's has {len(live)}")
        for i, (s, v) in enumerate(zip(stored, live)):
            check_structure(s, v, f"{where}.{i}", prefix, allow_missing)
    elif isinstance(live, (bool, np.bool_)):
        if not isinstance(stored, (bool, np.bool_)):
            fail(f"must be true or false, found {_brief(stored)}")
    elif isinstance(live, numbers.Integral):
        if isinstance(stored, (bool, np.bool_)) or not isinstance(stored, numbers.Integral) or stored < 0:
            fail(f"must be a non-negative integer, found {_brief(stored)}")
    elif isinstance(live, numbers.Real):
        if isinstance(stored, (bool, np.bool_)) or not isinstance(stored, numbers.Real):
            fail(f"must be a number, found {_brief(stored)}")
    elif isinstance(live, str):
        if not isinstance(stored, str):
            fail(f"must be a string, found {_brief(stored)}")


def _shape_dtype(x: Any) -> str:
    dtype = str(x.dtype).removeprefix("torch.")
    return f"{tuple(x.shape)} {dtype}"


def _brief(x: Any) -> str:
    text = repr(x)
    return f"{text[:60]}{'...' if len(text) > 60 else ''} ({type(x).__name__})"


# --- files ------------------------------------------------------------------------------------------------
def write_checkpoint(path: str, manifest: dict, state: Any) -> str:
    """Writes ``manifest`` (plain JSON) and ``state`` (any tree) atomically to directory ``path``; then removes
    what earlier, killed saves left in its parent directory."""
    from safetensors.numpy import save

    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tree, tensors = split_state(state)
    data = save(tensors)
    files = {TENSORS: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}}
    body = json.dumps({**manifest, "format_version": FORMAT_VERSION, "files": files, "state": tree}, indent=1)
    tmp = tempfile.mkdtemp(prefix=f".tmp-{os.path.basename(path)}-{os.getpid()}-{_host_tag()}-", dir=parent)
    try:
        _write_durably(os.path.join(tmp, TENSORS), data)
        _write_durably(os.path.join(tmp, MANIFEST), body.encode())
        _fsync(tmp)
        _move_into_place(tmp, path)
    except BaseException:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    remove_stale_dirs(parent)
    return path


def read_checkpoint(path: str, resolve_callables: bool = True) -> tuple[dict, Any]:
    """Returns ``(manifest, state)`` after checking every file against its checksum; raises CheckpointError
    naming what is wrong. ``resolve_callables=False``: the config's functions stay ``{"__callable__": name}``."""
    from safetensors.numpy import load

    path = checkpoint_dir(path)
    manifest = read_manifest(path)
    data = _read_verified(path, manifest)
    try:
        tensors = load(data[TENSORS])
    except Exception as e:  # noqa: BLE001 - safetensors raises several types for corrupt files
        raise CheckpointError(f"checkpoint {path}: {TENSORS} is corrupt ({e})") from e
    try:
        state = join_state(manifest["state"], tensors, resolve_callables=resolve_callables)
    except CheckpointError as e:
        raise CheckpointError(f"checkpoint {path}: {e}") from None
    except (TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"checkpoint {path}: the 'state' in {MANIFEST} is malformed ({e})") from e
    return manifest, state


def _read_verified(path: str, manifest: dict) -> dict[str, bytes]:
    """The bytes of each file the manifest lists, each checked against its size and SHA-256 (format 1 has no
    checksums: its tensors file is read as it is)."""
    files = manifest.get("files") if manifest["format_version"] >= 2 else {TENSORS: None}
    out: dict[str, bytes] = {}
    for name, meta in files.items():
        file = os.path.join(path, name)
        if not os.path.isfile(file):
            raise CheckpointError(f"checkpoint {path}: {name} is missing")
        with open(file, "rb") as f:
            data = f.read()
        if meta is not None:
            if len(data) != meta["bytes"]:
                raise CheckpointError(
                    f"checkpoint {path}: {name} is corrupt: it has {len(data)} bytes, the manifest"
                    f" says {meta['bytes']} (truncated or replaced)"
                )
            digest = hashlib.sha256(data).hexdigest()
            if digest != meta["sha256"]:
                raise CheckpointError(
                    f"checkpoint {path}: {name} is corrupt: its SHA-256 {digest[:16]}... is not"
                    f" the {meta['sha256'][:16]}... in {MANIFEST} (changed after it was written)"
                )
        out[name] = data
    return out


def read_manifest(path: str) -> dict:
    """The manifest of checkpoint ``path``, its structure checked (not the files it lists: read_checkpoint)."""
    path = checkpoint_dir(path)
    manifest_path = os.path.join(path, MANIFEST)
    if not os.path.isfile(manifest_path):
        raise CheckpointError(f"{path} is not a relayrl checkpoint: {MANIFEST} is missing")
    try:
        with open(manifest_path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CheckpointError(f"checkpoint {path}: {MANIFEST} is not valid JSON ({e})") from e

    def fail(problem: str) -> None:
        raise CheckpointError(f"checkpoint {path}: {MANIFEST} {problem}")

    if not isinstance(manifest, dict):
        fail(f"is not a JSON object (found {_brief(manifest)})")
    for key in ("format_version", "trainer"):
        if key not in manifest:
            fail(f"lacks {key!r}")
    version = manifest["format_version"]
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {version!r}; this relayrl reads versions <= {FORMAT_VERSION}"
            " (upgrade relayrl)"
        )
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        fail(f"has format version {version!r}, which is not a version (an integer from 1 to {FORMAT_VERSION})")
    if not isinstance(manifest["trainer"], str) or not manifest["trainer"]:
        fail(f"names no trainer ('trainer' is {_brief(manifest['trainer'])})")
    if not isinstance(manifest.get("state"), dict):
        fail(f"has no 'state' object (found {_brief(manifest.get('state'))})")
    if version >= 2:
        files = manifest.get("files")
        if not isinstance(files, dict):
            fail("lacks 'files' (the SHA-256 of each file of the checkpoint)")
        if TENSORS not in files:
            fail(f"has no checksum for {TENSORS} in 'files'")
        for name, meta in files.items():
            if not name or os.path.basename(name) != name or name in (".", "..", MANIFEST):
                fail(f"lists {name!r} in 'files', which is not a file of the checkpoint directory")
            if not (
                isinstance(meta, dict)
                and isinstance(meta.get("sha256"), str)
                and re.fullmatch(r"[0-9a-f]{64}", meta["sha256"])
                and isinstance(meta.get("bytes"), int)
                and not isinstance(meta["bytes"], bool)
                and meta["bytes"] >= 0
            ):
                fail(f"has no valid sha256 and bytes for {name!r} in 'files' (found {_brief(meta)})")
    return manifest


def checkpoint_dir(path: str) -> str:
    """Accepts the checkpoint directory, a file inside it, or the Tune checkpoint directory around it."""
    path = os.path.abspath(os.path.expanduser(str(path)))
    if not os.path.exists(path):
        # A save killed between its two renames (no renameat2) left the previous checkpoint at path.old-PID-HOST.
        # A directory whose removal was interrupted has lost its manifest first (_remove_dir), so never qualifies.
        olds = [
            d
            for d in glob.glob(glob.escape(path) + ".old-*")
            if _OLD_RE.fullmatch(os.path.basename(d))
            and os.path.isfile(os.path.join(d, MANIFEST))
            and os.path.isfile(os.path.join(d, TENSORS))
        ]
        if olds:
            return max(olds, key=lambda d: os.path.getmtime(os.path.join(d, MANIFEST)))
        raise CheckpointError(f"checkpoint path {path} does not exist")
    if os.path.isfile(path):
        return os.path.dirname(path)
    if not os.path.isfile(os.path.join(path, MANIFEST)) and os.path.isfile(os.path.join(path, "relayrl", MANIFEST)):
        return os.path.join(path, "relayrl")  # a Tune checkpoint directory holding ours (see tune_adapter.py)
    return path
