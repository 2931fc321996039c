"""The bootnode's per-packet layer: the compiled extension, or its pure-Python twin.

``GOCHAT_PURE_PYTHON=1`` forces the twin (as msgpack's MSGPACK_PUREPYTHON does);
otherwise the extension is used when it was built, and the twin when it was not.
Both modules export the same names.
"""

from __future__ import annotations

import os

from gochat.bootnode import _purepath as pure

if os.environ.get("GOCHAT_PURE_PYTHON", "") not in ("", "0"):
    impl = pure
    IMPLEMENTATION = "pure-python"
else:
    try:
        from gochat.bootnode import _fastpath as impl  # type: ignore[no-redef]  # the twin of the module bound above

        IMPLEMENTATION = "cython"
    except ImportError:  # no compiler where this was installed
        impl = pure
        IMPLEMENTATION = "pure-python"

RegistrationTable = impl.RegistrationTable
FastPath = impl.FastPath
TableFull = impl.TableFull
send_records = impl.send_records
recv_batch = impl.recv_batch

__all__ = ["IMPLEMENTATION", "FastPath", "RegistrationTable", "TableFull", "pure", "recv_batch", "send_records"]
