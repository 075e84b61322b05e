"""The numpy face: every input form means the same thing; backend selection."""

from __future__ import annotations

import os
import subprocess
import sys

import cardmint.kernel as ck
import numpy as np
from cardmint.kernel import Kernel, Packed
from hypothesis import given
from hypothesis import strategies as st

LINES = st.lists(
    st.text(alphabet=st.sampled_from(list("0123456789abcXYZ -\u3000\uff21\u200b\u00e9")), max_size=20),
    max_size=20,
)


@given(LINES)
def test_every_input_form_gives_the_same_answer(kernel: Kernel, lines: list[str]) -> None:
    # Trailing NULs cannot live in a numpy S array; none of these strings has one.
    as_list = kernel.check(lines)
    as_bytes = kernel.check([s.encode() for s in lines])
    as_u = kernel.check(np.array(lines, dtype="U32")) if lines else as_list
    as_s = kernel.check(np.array([s.encode() for s in lines], dtype="S80")) if lines else as_list
    as_lines = kernel.check(Packed.lines("\n".join(lines).encode() + (b"\n" if lines else b"")))
    for other in (as_bytes, as_u, as_s, as_lines):
        assert other.status.tolist() == as_list.status.tolist()
        assert other.codes.tolist() == as_list.codes.tolist()


def test_packed_lines_edges() -> None:
    assert Packed.lines(b"").rows == 0
    assert Packed.lines(b"\n").rows == 1
    p = Packed.lines(b"ab\n\ncd")
    assert p.rows == 3
    assert p.offsets.tolist() == [0, 2, 2, 4]
    assert bytes(p.data) == b"abcd"


def test_backend_selection_by_environment() -> None:
    for name in ck.available_backends():
        out = subprocess.run(
            [sys.executable, "-c", "import cardmint.kernel as k; print(k.BACKEND)"],
            env={**os.environ, "CARDMINT_KERNEL": name},
            capture_output=True,
            text=True,
            check=True,
        )
        assert out.stdout.strip() == name
    bad = subprocess.run(
        [sys.executable, "-c", "import cardmint.kernel"],
        env={**os.environ, "CARDMINT_KERNEL": "fortran"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode != 0 and "unknown kernel backend 'fortran'" in bad.stderr


def test_default_is_the_fastest_available() -> None:
    env = {k: v for k, v in os.environ.items() if k != "CARDMINT_KERNEL"}
    out = subprocess.run(
        [sys.executable, "-c", "import cardmint.kernel as k; print(k.BACKEND, k.available_backends()[0])"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    live, fastest = out.stdout.split()
    assert live == fastest


def test_module_level_scalar_path() -> None:
    code = ck.generate(1, seed=bytes(32)).codes[0].decode()
    assert ck.check_one(code) == (0, code.encode())
    assert ck.check_one(code.lower()[:-1] + "-") == (ck.Status.BAD_LENGTH, b"")
