"""How a params.yaml field is declared (`param`: its default, one-line doc and checks),
and the docs several sections share."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import field
from typing import Any


def param(default: Any = dataclasses.MISSING, doc: str = "", *, factory: Any = None, **checks: Any):
    """A documented config field. `checks`: gt, ge, lt, le (numbers), min_len (lists)."""
    meta = {"doc": doc, **checks}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


DEVICE_DOC = "auto (a GPU when there is one), cpu, cuda or cuda:N"
DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
THREADS_DOC = ("CPU threads for torch: a fixed number (the default 1: the same results whatever else runs, since a "
               "CPU op's summation order follows the thread count), or auto = the cores this process may use "
               "(affinity mask and cgroup CPU quota, as in a container) that other processes leave, re-checked "
               "every 2 s (faster alone, but results then vary with the machine's load)")
