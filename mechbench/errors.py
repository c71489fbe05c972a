"""One exception family for everything a user can get wrong.

Every error mechbench raises on bad input is a :class:`MechbenchError` whose message is one line
that names the problem and the fix. The CLI prints that line (no traceback) and exits with status 2.
"""

from __future__ import annotations


class MechbenchError(Exception):
    """Base class: a user-facing, one-line, actionable error."""


class UnknownModelError(MechbenchError):
    """The model spec is neither a registry name, a local directory nor a loadable hub name."""


class ModelPackMissingError(MechbenchError):
    """A registry model whose weight package is not installed."""


class ConfigError(MechbenchError):
    """A config file that does not parse or does not validate."""


class DatasetError(MechbenchError):
    """An empty or unusable dataset (no texts, texts too long for the model)."""


class StoreError(MechbenchError):
    """A result store that cannot be written or read (permissions, corrupt file, newer format)."""


class CapabilityError(MechbenchError):
    """An analysis asked a model for something it does not have (e.g. RoPE q/k on a learned-position model)."""


class NonFiniteError(MechbenchError):
    """Activations or logits with NaN or inf (a float16 model that overflows); rerun in float32."""


def one_line(text: object) -> str:
    """``text`` as one line: every run of whitespace (newlines included) becomes one space.

    For reasons quoted from other libraries (pandas, PyYAML, pyarrow), whose messages may span lines.
    """
    return " ".join(str(text).split())


def has_control_characters(text: object) -> bool:
    """Whether ``text`` holds a control character (NUL, newline, tab, ...): a path that does, the file
    system refuses (NUL) or a one-line message cannot show as it is (newline)."""
    return any(ord(c) < 32 or ord(c) == 127 for c in str(text))
