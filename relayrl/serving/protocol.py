"""The policy server's wire protocol: message schemas, their validation, JSON / msgpack bodies, spaces as JSON.

No HTTP here (the server and the client both use it). Every message is a JSON object (or the same object in
msgpack); ``validate_call`` checks one against its command's schema and decodes observations and actions
against the env's spaces, raising ProtocolError (status 400, naming the field) before the env sees anything.
In msgpack bodies a numpy array may travel as ext type ``NDARRAY_EXT``: the msgpack of ``[dtype, shape,
raw bytes]`` (numeric dtypes only); JSON carries arrays as (nested) lists. Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any, Callable

import gymnasium as gym
import numpy as np

PROTOCOL_VERSION = 1
PREFIX = f"/v{PROTOCOL_VERSION}/"
JSON = "application/json"
MSGPACK = "application/msgpack"
MSGPACK_TYPES = (MSGPACK, "application/x-msgpack")
NDARRAY_EXT = 1
EPISODE_ID = re.compile(r"^[A-Za-z0-9_.:\-]{1,128}$")
_NUMERIC_KINDS = "biuf"  # bool, signed, unsigned, float: the only dtypes an array may decode to

# command -> {field: (kind, required)}; the kinds are checked by _FIELD_CHECKS / the spaces.
COMMANDS: dict[str, dict[str, tuple[str, bool]]] = {
    "start_episode": {"episode_id": ("episode_id", False), "training_enabled": ("bool", False)},
    "get_action": {"episode_id": ("episode_id", True), "observation": ("observation", True)},
    "log_action": {
        "episode_id": ("episode_id", True),
        "observation": ("observation", True),
        "action": ("action", True),
    },
    "log_returns": {"episode_id": ("episode_id", True), "reward": ("reward", True), "info": ("info", False)},
    "end_episode": {
        "episode_id": ("episode_id", True),
        "observation": ("observation", True),
        "truncated": ("bool", False),
    },
}
MAX_BATCH_CALLS = 10_000


class ProtocolError(Exception):
    """A request the server refuses: ``status`` (HTTP), ``message`` and the ``field`` it names (or None)."""

    def __init__(self, status: int, message: str, field: str | None = None):
        super().__init__(message)
        self.status, self.message, self.field = status, message, field

    def to_wire(self) -> dict:
        return {"error": {"status": self.status, "message": self.message, "field": self.field}}


def bad(field: str, problem: str) -> ProtocolError:
    return ProtocolError(400, f"field {field!r} {problem}", field)


# --- bodies -----------------------------------------------------------------------------------------------------
def is_msgpack(content_type: str | None) -> bool:
    return (content_type or "").split(";")[0].strip().lower() in MSGPACK_TYPES


def decode_body(body: bytes, content_type: str | None) -> Any:
    """The request's object; ProtocolError 400 for a body that is not JSON / msgpack, 415 for other types."""
    kind = (content_type or JSON).split(";")[0].strip().lower()
    if kind in MSGPACK_TYPES:
        import msgpack

        try:
            return msgpack.unpackb(body, ext_hook=_ext_hook, strict_map_key=False, raw=False)
        except Exception as e:  # noqa: BLE001 - msgpack raises several types (and ours from _ext_hook)
            raise ProtocolError(400, f"the body is not valid msgpack: {e}") from None
    if kind != JSON:
        raise ProtocolError(415, f"Content-Type {kind!r} is not supported; send {JSON} or {MSGPACK}")
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as e:
        raise ProtocolError(400, f"the body is not valid JSON: {e}") from None


def encode_body(obj: Any, msgpack_body: bool) -> bytes:
    if msgpack_body:
        import msgpack

        return msgpack.packb(obj, default=_msgpack_default, use_bin_type=True)
    return json.dumps(obj, default=_json_default, separators=(",", ":")).encode()


def _ext_hook(code: int, data: bytes) -> Any:
    if code != NDARRAY_EXT:
        raise ValueError(f"unknown msgpack ext type {code}")
    for head, dt, shape, nbytes in _EXT_HEADS:  # a few entries: the arrays' recent (dtype, shape)s
        if len(data) == len(head) + nbytes and data.startswith(head):
            return np.frombuffer(data[len(head) :], dtype=dt).reshape(shape)
    return _new_ext(data)


def _new_ext(data: bytes) -> np.ndarray:
    """An array of a (dtype, shape) not seen lately: checked in full, its header then remembered (a bounded set)."""
    import msgpack

    dtype, shape, raw = msgpack.unpackb(data, raw=False)
    dt = np.dtype(str(dtype))
    if dt.kind not in _NUMERIC_KINDS or dt.hasobject:
        raise ValueError(f"array dtype {dt} is not numeric")
    if not isinstance(shape, list) or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise ValueError(f"array shape {shape!r} is not a list of sizes")
    if math.prod(shape) * dt.itemsize != len(raw):
        raise ValueError(f"array of shape {shape} and dtype {dt} needs {math.prod(shape) * dt.itemsize} bytes")
    if isinstance(raw, bytes) and data.endswith(raw):
        global _EXT_HEADS  # replaced, never changed in place: other threads may be reading it
        _EXT_HEADS = (*_EXT_HEADS[-7:], (bytes(data[: len(data) - len(raw)]), dt, tuple(shape), len(raw)))
    return np.frombuffer(raw, dtype=dt).reshape(shape)


def _msgpack_default(x: Any) -> Any:
    if isinstance(x, np.ndarray) and x.dtype.kind in _NUMERIC_KINDS:
        raw = x.tobytes()  # C order
        key = (x.dtype, x.shape)
        head = _PACK_HEADS.get(key)
        if head is None:  # the msgpack of [dtype, shape, raw] less raw itself: the same bytes as packing the list
            head = _packb([x.dtype.str, list(x.shape), raw])[: -len(raw) or None]
            if len(_PACK_HEADS) >= 64:
                _PACK_HEADS.clear()
            _PACK_HEADS[key] = head
        return _ext_type(NDARRAY_EXT, head + raw)
    return _json_default(x)


def _packb(x: Any) -> bytes:
    import msgpack

    return msgpack.packb(x, use_bin_type=True)


def _ext_type(code: int, data: bytes) -> Any:
    import msgpack

    return msgpack.ExtType(code, data)


# The msgpack bytes before an array's raw data (its dtype, shape and the data's length), by what they encode:
# decoding an array of a remembered header skips unpacking and checking it again; encoding one skips packing it.
_EXT_HEADS: tuple[tuple[bytes, np.dtype, tuple, int], ...] = ()
_PACK_HEADS: dict[tuple, bytes] = {}  # (np.dtype, shape) -> head


def _json_default(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(f"{type(x).__name__} cannot be sent")


# --- calls ------------------------------------------------------------------------------------------------------
def validate_call(command: str, msg: Any, env: Any, where: str = "", observation: Any = None) -> dict:
    """Checks ``msg`` against ``command``'s schema and returns it with observations / actions decoded for
    ``env``'s spaces (``env.multiagent``: dicts keyed by agent id); ``where`` prefixes field names;
    ``observation``: msg's observation already decoded (``validate_batch`` decodes a batch's at once)."""
    if command not in COMMANDS:
        raise ProtocolError(404, f"unknown command {command!r}; the commands are {sorted(COMMANDS)}", where or None)
    if not _is_map(msg):
        raise ProtocolError(400, f"the {command} message must be an object, got {_kind(msg)}", where or None)
    schema = COMMANDS[command]
    for key in msg:
        if key not in schema:
            raise bad(where + str(key), f"is not a field of {command} (its fields: {sorted(schema)})")
    out = {}
    for key, (kind, required) in schema.items():
        field = where + key
        if key not in msg or msg[key] is None:
            if required:
                raise bad(field, "is missing")
            continue
        value = msg[key]
        if key == "observation" and observation is not None:
            out[key] = observation
        elif kind in ("observation", "action"):
            out[key] = _per_agent(env, value, field, kind)
        else:
            out[key] = _FIELD_CHECKS[kind](value, field, env)
    return out


def validate_batch(msg: Any, env: Any) -> list[tuple[str, dict]]:
    """``{"calls": [{"command": ..., **fields}, ...]}`` -> [(command, fields)]; each episode's get_action (one at
    most) must be its last call in the batch."""
    if not _is_map(msg) or set(msg) != {"calls"}:
        raise bad("calls", "must be the only field of a batch: {'calls': [{'command': ..., ...}, ...]}")
    calls = msg["calls"]
    if not isinstance(calls, list) or not 0 < len(calls) <= MAX_BATCH_CALLS:
        raise bad("calls", f"must be a list of 1 to {MAX_BATCH_CALLS} calls")
    out, asked = [], {}
    observations = _observations_at_once(calls, env)
    for i, call in enumerate(calls):
        if not _is_map(call) or not isinstance(call.get("command"), str):
            raise bad(f"calls[{i}].command", "is missing: every call is an object with a 'command' string")
        command, episode = call["command"], call.get("episode_id")
        if command == "get_action" and i in observations and len(call) == 3 and _is_episode_id(episode):
            fields = {"episode_id": episode, "observation": observations[i]}  # what validate_call would return
        else:
            body = {k: v for k, v in call.items() if k != "command"}
            fields = validate_call(command, body, env, f"calls[{i}].", observations.get(i))
        episode = fields.get("episode_id")
        if episode in asked:
            raise bad(
                f"calls[{i}].episode_id",
                f"names episode {episode!r} after its get_action in calls[{asked[episode]}]; an episode's"
                " get_action must be its last call in a batch",
            )
        if command == "get_action":
            asked[episode] = i
        out.append((command, fields))
    return out


def _observations_at_once(calls: list, env: Any) -> dict[int, np.ndarray]:
    """A batch's observations decoded as one array (single-agent env, Box observation space): {call index: its
    row}. Exactly when each would pass ``decode_value`` (one array of them passes the same checks): else {}, and
    they are decoded one by one, which names the field in error."""
    space = None if getattr(env, "multiagent", False) else env.observation_space_of(None)
    if not isinstance(space, gym.spaces.Box):
        return {}
    index = [i for i, call in enumerate(calls) if _is_map(call) and call.get("observation") is not None]
    if len(index) < 2:
        return {}
    values = [calls[i]["observation"] for i in index]
    if any(type(v) is not np.ndarray and isinstance(v, (str, bytes, Mapping)) for v in values):
        return {}
    try:
        x = np.asarray(values)
        if x.dtype.kind not in _NUMERIC_KINDS:
            return {}
        return dict(zip(index, _box_array(x, (len(values), *space.shape), space, "calls")))
    except (ValueError, TypeError, ProtocolError):  # ragged, or a row decode_value would refuse
        return {}


def _per_agent(env: Any, value: Any, field: str, kind: str) -> Any:
    space_of = env.observation_space_of if kind == "observation" else env.action_space_of
    if not getattr(env, "multiagent", False):
        return decode_value(space_of(None), value, field)
    if not isinstance(value, Mapping):
        raise bad(field, f"must be an object keyed by agent id, got {_kind(value)}")
    out = {}
    for agent, v in value.items():
        try:
            space = space_of(agent)
        except KeyError as e:
            raise bad(f"{field}.{agent}", str(e.args[0])) from None
        out[agent] = decode_value(space, v, f"{field}.{agent}")
    return out


def _is_map(x: Any) -> bool:
    return type(x) is dict or isinstance(x, Mapping)  # decoded bodies hold dicts: the ABC check is slow


def _is_episode_id(value: Any) -> bool:
    return isinstance(value, str) and EPISODE_ID.match(value) is not None


def _episode_id(value: Any, field: str, env: Any) -> str:
    if not _is_episode_id(value):
        raise bad(field, f"must be 1-128 characters of A-Z a-z 0-9 _ . : -, got {_brief(value)}")
    return value


def _bool(value: Any, field: str, env: Any) -> bool:
    if not isinstance(value, bool):
        raise bad(field, f"must be true or false, got {_brief(value)}")
    return value


def _number(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise bad(field, f"must be a number, got {_brief(value)}")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond float's range
        number = math.inf
    if not math.isfinite(number):
        raise bad(field, f"must be a finite number, got {_brief(value)}")
    return number


def _reward(value: Any, field: str, env: Any) -> Any:
    if not getattr(env, "multiagent", False):
        return _number(value, field)
    if not isinstance(value, Mapping):
        raise bad(field, f"must be an object of rewards keyed by agent id, got {_kind(value)}")
    return {agent: _number(r, f"{field}.{agent}") for agent, r in value.items()}


def _info(value: Any, field: str, env: Any) -> Any:
    if not isinstance(value, Mapping):
        raise bad(field, f"must be an object, got {_kind(value)}")
    return dict(value)


_FIELD_CHECKS: dict[str, Callable[[Any, str, Any], Any]] = {
    "episode_id": _episode_id,
    "bool": _bool,
    "reward": _reward,
    "info": _info,
}


# --- values of a space ------------------------------------------------------------------------------------------
def _box_array(x: np.ndarray, shape: tuple, space: gym.spaces.Box, field: str) -> np.ndarray:
    """``x`` in ``space``'s dtype once it has ``shape`` (the space's, or a batch of it), a dtype that casts to the
    space's, and only finite values; else ProtocolError 400 naming ``field``."""
    if x.shape != shape:
        raise bad(field, f"has shape {x.shape}, the space {space} has shape {space.shape}")
    if not np.can_cast(x.dtype, space.dtype, "same_kind"):
        raise bad(field, f"has dtype {x.dtype}, which does not fit the space's dtype {space.dtype} ({space})")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise bad(field, "holds NaN or infinity")
    return x.astype(space.dtype)


def decode_value(space: gym.Space, value: Any, field: str) -> Any:
    """``value`` (JSON / msgpack) as an element of ``space``; ProtocolError 400 naming ``field`` for a wrong
    type, shape or dtype (out-of-bounds Box values pass: simulators often exceed nominal bounds)."""
    if isinstance(space, gym.spaces.Discrete):
        x = _integers(value, (), field, space)
        if not space.start <= int(x) < space.start + space.n:
            raise bad(field, f"is {int(x)}, outside {space}")
        return int(x)
    if isinstance(space, (gym.spaces.MultiDiscrete, gym.spaces.MultiBinary)):
        nvec = np.asarray(space.nvec) if isinstance(space, gym.spaces.MultiDiscrete) else np.full(space.shape, 2)
        x = _integers(value, tuple(nvec.shape), field, space)
        if np.any(x < 0) or np.any(x >= nvec):
            raise bad(field, f"has values outside {space}")
        return x.astype(space.dtype)
    if isinstance(space, gym.spaces.Box):
        return _box_array(_array(value, field, space), space.shape, space, field)
    if isinstance(space, gym.spaces.Dict):
        if not isinstance(value, Mapping) or set(value) != set(space.spaces):
            raise bad(field, f"must be an object with the keys {sorted(space.spaces)}, got {_brief(value)}")
        return {k: decode_value(s, value[k], f"{field}.{k}") for k, s in space.spaces.items()}
    if isinstance(space, gym.spaces.Tuple):
        if not isinstance(value, list) or len(value) != len(space.spaces):
            raise bad(field, f"must be a list of {len(space.spaces)} values, got {_brief(value)}")
        return tuple(decode_value(s, v, f"{field}[{i}]") for i, (s, v) in enumerate(zip(space.spaces, value)))
    raise bad(field, f"has the space {space}, which the policy server does not support")


def _array(value: Any, field: str, space: gym.Space) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, (str, bytes, Mapping)) or value is None:
        raise bad(field, f"must be numbers for {space}, got {_kind(value)}")
    try:
        x = np.asarray(value)
    except ValueError:  # ragged nesting
        raise bad(field, f"is not a rectangular array of numbers (ragged lists) for {space}") from None
    if x.dtype.kind not in _NUMERIC_KINDS:
        raise bad(field, f"must hold numbers only for {space} (got dtype {x.dtype}: strings, null or ragged lists)")
    return x


def _integers(value: Any, shape: tuple, field: str, space: gym.Space) -> np.ndarray:
    if isinstance(value, bool):
        raise bad(field, f"must be an integer for {space}, got {value}")
    x = _array(value, field, space)
    if x.shape != shape:
        raise bad(field, f"has shape {x.shape}, the space {space} has shape {shape}")
    if x.dtype.kind not in "iu":
        raise bad(field, f"must hold integers for {space}, got dtype {x.dtype}")
    return x


def to_wire(x: Any) -> Any:
    """An action (or observation) as JSON / msgpack values (numpy arrays stay arrays for msgpack's ext type)."""
    kind = type(x)
    if kind in _AS_IS:
        return x
    if kind is dict:
        if all(type(v) in _AS_IS for v in x.values()):
            return x  # nothing to convert (a call of the client's, read only)
        return {k: to_wire(v) for k, v in x.items()}
    if isinstance(x, np.generic):  # before Mapping, whose check is slow
        return x.item()
    if isinstance(x, (np.ndarray, int, float)):
        return x
    if isinstance(x, Mapping):
        return {k: to_wire(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_wire(v) for v in x]
    return x


_AS_IS = frozenset((str, np.ndarray, int, float, bool, type(None)))


def _kind(x: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", type(None): "null"}.get(type(x), type(x).__name__)


def _brief(x: Any) -> str:
    text = repr(x)
    return text if len(text) <= 60 else text[:57] + "..."


# --- spaces as JSON ---------------------------------------------------------------------------------------------
def space_to_wire(space: Any) -> Any:
    """A gymnasium space as JSON (non-finite bounds as the strings "inf" / "-inf"); a dict of spaces (per agent)
    as an object of them."""
    if isinstance(space, Mapping):
        return {"type": "PerAgent", "spaces": {str(k): space_to_wire(s) for k, s in space.items()}}
    if isinstance(space, gym.spaces.Box):
        low, high = ([_bound(v) for v in b.ravel()] for b in (space.low, space.high))
        return {"type": "Box", "shape": list(space.shape), "dtype": str(space.dtype), "low": low, "high": high}
    if isinstance(space, gym.spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, gym.spaces.MultiDiscrete):
        return {"type": "MultiDiscrete", "nvec": np.asarray(space.nvec).tolist()}
    if isinstance(space, gym.spaces.MultiBinary):
        return {"type": "MultiBinary", "n": np.asarray(space.n).tolist()}
    if isinstance(space, gym.spaces.Dict):
        return {"type": "Dict", "spaces": {k: space_to_wire(s) for k, s in space.spaces.items()}}
    if isinstance(space, gym.spaces.Tuple):
        return {"type": "Tuple", "spaces": [space_to_wire(s) for s in space.spaces]}
    raise ValueError(f"the policy server cannot describe the space {space}")


def space_from_wire(d: Mapping) -> Any:
    kind = d["type"]
    if kind == "PerAgent":
        return {k: space_from_wire(s) for k, s in d["spaces"].items()}
    if kind == "Box":
        shape = tuple(d["shape"])
        dtype = np.dtype(d["dtype"])
        low, high = (np.array([float(v) for v in d[k]]).reshape(shape).astype(dtype) for k in ("low", "high"))
        return gym.spaces.Box(low, high, shape, dtype=dtype)
    if kind == "Discrete":
        return gym.spaces.Discrete(int(d["n"]), start=int(d.get("start", 0)))
    if kind == "MultiDiscrete":
        return gym.spaces.MultiDiscrete(d["nvec"])
    if kind == "MultiBinary":
        return gym.spaces.MultiBinary(d["n"])
    if kind == "Dict":
        return gym.spaces.Dict({k: space_from_wire(s) for k, s in d["spaces"].items()})
    if kind == "Tuple":
        return gym.spaces.Tuple([space_from_wire(s) for s in d["spaces"]])
    raise ValueError(f"unknown space type {kind!r}")


def _bound(v: float) -> Any:
    v = float(v)
    return v if math.isfinite(v) else ("inf" if v > 0 else "-inf")
