"""The notebook's six ctypes examples (examples/c/ctest.c), declared in config/pool.toml with no wrapper code,
called through the default pool's 32-bit workers with the notebook's inputs and outputs.

The inputs are tests/libcalls.py's, which test_examples.py passes to the same functions directly with
ctypes: a failure here and not there is in the declaration layer, not in the library.
"""

from __future__ import annotations

import array
from typing import Any

import pytest

from client import ArgumentError, Client, ServiceProxy

from .libcalls import M1, M2, SENTENCE, SUM_VALUES, TITLE, A, B

TITLED = "The Quick  Brown\tFox, 2nd Edition"


@pytest.fixture()
def notebook(client: Client) -> ServiceProxy:
    return client.service("notebook")


def test_add_takes_and_returns_structs_as_dicts(notebook: ServiceProxy) -> None:
    assert notebook.add(A, B) == {"re": 5.0, "im": 7.0}


def test_swap_gives_back_both_structs_through_their_pointers(notebook: ServiceProxy) -> None:
    first, second = {"re": 3.0, "im": 4.0}, {"re": -1.0, "im": 0.5}
    assert notebook.swap(first, second) == {"a": second, "b": first}


def test_sum_reads_the_declared_length(notebook: ServiceProxy) -> None:
    assert notebook.sum(SUM_VALUES, len(SUM_VALUES)) == 32.0
    assert notebook.sum(array.array("d", SUM_VALUES), 3) == 6.0


def test_titlecase_edits_the_text_in_place(notebook: ServiceProxy) -> None:
    assert notebook.titlecase(TITLE) == {"s": TITLED}
    assert notebook.titlecase(TITLE.encode()) == {"s": TITLED.encode()}  # text given as bytes comes back bytes


def test_tokenize_fills_the_callers_rows_of_20_chars(notebook: ServiceProxy) -> None:
    result = notebook.tokenize(" ", SENTENCE)
    assert result["return"] == 8
    assert len(result["t"]) == 20
    assert result["t"][:8] == SENTENCE.split()


def test_mult_multiplies_2d_arrays_as_nested_lists(notebook: ServiceProxy) -> None:
    assert notebook.mult(M1, M2, 2, 2, 2) == {"c": [[19.0, 22.0], [43.0, 50.0]]}
    assert notebook.mult(n=1, r=2, m=2, a=[[1.0, 1.0]], b=M2) == {"c": [[12.0, 14.0]]}


def test_mult_multiplies_numpy_arrays(notebook: ServiceProxy) -> None:
    np = pytest.importorskip("numpy")
    result = notebook.mult(np.array(M1), np.array(M2), 2, 2, 2)
    assert isinstance(result["c"], np.ndarray) and result["c"].dtype == np.float64
    np.testing.assert_array_equal(result["c"], [[19.0, 22.0], [43.0, 50.0]])


@pytest.mark.parametrize(
    ("function", "args"),
    [
        ("sum", ([1.0], 7)),  # shorter than n
        ("sum", (array.array("i", [1, 2, 3]), 3)),  # int elements where double f[] is declared
        ("sum", (SUM_VALUES, -1)),  # a negative length
        ("titlecase", ("x" * 300,)),  # longer than the declared 256-byte buffer
        ("mult", ([[1.0] * 101] * 2, [[1.0] * 2] * 101, 2, 101, 2)),  # rows wider than double a[][100]
        ("add", ({"re": 1.0}, B)),  # a missing field
        ("add", ({**A, "phase": 0.0}, B)),  # an unknown field
    ],
    ids=["short", "dtype", "negative", "text too long", "too wide", "missing field", "unknown field"],
)
def test_refused_before_the_library_is_called(notebook: ServiceProxy, function: str, args: tuple[Any, ...]) -> None:
    with pytest.raises(ArgumentError):
        getattr(notebook, function)(*args)
    assert notebook.sum(SUM_VALUES, len(SUM_VALUES)) == 32.0  # and the worker is still there
