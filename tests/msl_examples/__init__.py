"""msl-loadlib's shipped example pairs (msl/examples/loadlib, MIT License, Copyright (c) Measurement Standards
Laboratory of New Zealand), with only their import lines changed; their 32-bit libraries come from the
msl-loadlib wheel (tests/test_msl_dropin.py fetches them)."""

from .cpp32 import Cpp32, FourPoints, NPoints, Point
from .cpp64 import Cpp64
from .echo32 import Echo32
from .echo64 import Echo64
from .fortran32 import Fortran32
from .fortran64 import Fortran64

__all__ = ["Cpp32", "Cpp64", "Echo32", "Echo64", "Fortran32", "Fortran64", "FourPoints", "NPoints", "Point"]
