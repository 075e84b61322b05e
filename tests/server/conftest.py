"""Nothing of its own: the storage fixtures are shared by every package under tests/.

``backend``, ``storage_url``, ``storage``, ``opener``, ``clock`` and the session's single
throwaway PostgreSQL cluster (``pg_server``) live in tests/conftest.py. Do not import
fixtures from there into a conftest: an imported fixture is defined again, with its own
session cache, which would start a second cluster. Classes and plain values are fine to
import (``from .conftest import TIMINGS, FakeClock, PgServer`` keeps working).
"""

from __future__ import annotations

from tests.conftest import TIMINGS, FakeClock, PgServer

__all__ = ["TIMINGS", "FakeClock", "PgServer"]
