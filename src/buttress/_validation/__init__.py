"""@validate_input and @validate_output: schemas enforced around inference.

``_specs`` holds the public spec objects (ArraySpec, Keys), ``_checks`` compiles them into
checking closures, ``_binding`` compiles a function's signature and specs into one
validator, ``_decorators`` holds the decorators and their sync and async shells.
"""

from __future__ import annotations

from ._decorators import OnError as OnError
from ._decorators import validate_input as validate_input
from ._decorators import validate_output as validate_output
from ._specs import ArraySpec as ArraySpec
from ._specs import Keys as Keys

__all__ = ["ArraySpec", "Keys", "OnError", "validate_input", "validate_output"]
