"""Type stub of the Cython SQLite audit reader (server/storage/_sqlite_audit.pyx)."""

import numpy as np
import numpy.typing as npt

class AuditReadError(Exception): ...

def read_page(
    path: str, after_id: int, upto_id: int
) -> (
    tuple[
        npt.NDArray[np.int64],
        npt.NDArray[np.int64],
        bytes,
        npt.NDArray[np.int64],
        bytes,
        bytes,
    ]
    | None
): ...
