"""Count the places where the host waits for the device (a "sync"), with where each happened.

On an accelerator each of these stalls the host until the device has caught up:

* scalar reads: `item()`, `float(t)`, `int(t)`, `bool(t)` (all `aten._local_scalar_dense`);
* `tolist()` and `numpy()` (a read of the data; on a device always after a device-to-host copy);
* device-to-host copies (`.cpu()`, `.to("cpu")` of a device tensor);
* ops whose output shape depends on the data (`nonzero`, boolean-mask indexing `t[mask]` and
  `t[mask] = v`, `masked_select`, `unique`, `repeat_interleave` without an output size): the
  host must learn the size before it can allocate the result.

The counter sees them on any device (the CPU included, where none of them costs anything), so a
CPU test can pin a count that holds on a GPU. Each event is attributed to the innermost frame
outside torch; `in_scope` selects the ones in a given set of files (victor's code).
"""
from __future__ import annotations

import os
import traceback
from collections import Counter
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
VICTOR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_TORCH = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep
_HERE = os.path.abspath(__file__)

_DATA_DEPENDENT = {aten.nonzero, aten.masked_select, aten._unique2, aten.unique_dim, aten.unique_consecutive,
                   aten.unique_dim_consecutive, aten._unique, aten.argwhere}
_INDEXING = {aten.index, aten.index_put, aten.index_put_, aten._index_put_impl_}


@dataclass(frozen=True)
class Sync:
    kind: str
    where: str  # "path:line in function" of the innermost frame outside torch

    def in_scope(self, prefixes) -> bool:
        return any(self.where.startswith(p) for p in prefixes)


def _bool_index(args) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return any(t is not None and torch.is_tensor(t) and t.dtype in (torch.bool, torch.uint8) for t in indices)


class SyncCounter(TorchDispatchMode):
    """`with SyncCounter() as c: ...` then `c.events` (every sync) or `c.count(prefixes)`."""

    def __init__(self):
        super().__init__()
        self.events: list[Sync] = []
        self._patched = {}

    # -- what dispatch does not see: tolist / numpy read the data directly -----------------------
    def __enter__(self):
        for name in ("tolist", "numpy"):
            original = getattr(torch.Tensor, name)
            self._patched[name] = original

            def wrapper(t, *a, _original=original, _name=name, **k):
                self._record(f"{_name}()")
                return _original(t, *a, **k)

            setattr(torch.Tensor, name, wrapper)
        return super().__enter__()

    def __exit__(self, *exc):
        for name, original in self._patched.items():
            setattr(torch.Tensor, name, original)
        self._patched.clear()
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = func.overloadpacket
        kind = None
        if packet is aten._local_scalar_dense:
            kind = "scalar read"
        elif packet in _DATA_DEPENDENT or (packet is aten.repeat_interleave and "output_size" not in kwargs
                                           and torch.is_tensor(args[0]) and len(args) == 1):
            kind = f"data-dependent shape ({packet.__name__})"
        elif packet in _INDEXING and _bool_index(args):
            kind = "boolean-mask indexing"
        elif packet is aten._to_copy and torch.is_tensor(args[0]) and args[0].device.type != "cpu" \
                and str(kwargs.get("device", args[0].device)) == "cpu":
            kind = "device-to-host copy"
        elif packet is aten.copy_ and args[0].device.type == "cpu" and torch.is_tensor(args[1]) \
                and args[1].device.type != "cpu":
            kind = "device-to-host copy"
        if kind is not None:
            self._record(kind)
        return func(*args, **kwargs)

    def _record(self, kind: str) -> None:
        where = "?"
        for frame in reversed(traceback.extract_stack()[:-2]):
            path = os.path.abspath(frame.filename)
            if path == _HERE or path.startswith(_TORCH):
                continue
            where = f"{path}:{frame.lineno} in {frame.name}"
            break
        self.events.append(Sync(kind, where))

    def count(self, prefixes=(VICTOR,)) -> int:
        return sum(e.in_scope(prefixes) for e in self.events)

    def table(self, prefixes=(VICTOR,)) -> list[tuple[str, str, int, bool]]:
        """(kind, where, times, counted) per distinct place, counted ones first."""
        seen = Counter(self.events)
        rows = [(e.kind, e.where, n, e.in_scope(prefixes)) for e, n in seen.items()]
        return sorted(rows, key=lambda r: (not r[3], r[1]))


def short(where: str) -> str:
    """A path relative to the package roots, for tables."""
    for root in (os.path.dirname(VICTOR.rstrip(os.sep)) + os.sep, os.path.dirname(_TORCH.rstrip(os.sep)) + os.sep):
        if where.startswith(root):
            return where[len(root):]
    return where
