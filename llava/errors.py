"""Typed errors of llava-aim.

Every error a user can cause by bad input derives from :class:`AIMError`; the CLI turns
these into exit status 2 with a single line on stderr. Anything else is an internal error.
"""


class AIMError(Exception):
    """Base class of every user-facing llava-aim error."""


class AIMConfigError(AIMError, ValueError):
    """An AIM setting is out of range or inconsistent (e.g. l1 >= l2).

    The message may name AIMConfig fields as tokens ("{l1}", "{l1=5}", "{l1:off}",
    llava.aim.knobs.render): ``str(exc)`` reads them as Python fields, and
    ``llava.aim.knobs.worded(exc, "flag" | "model_arg")`` as the user typed them."""

    def __init__(self, message: str = "") -> None:
        from llava.aim.knobs import render

        self.template = message
        super().__init__(render(message))

    @property
    def fields(self) -> tuple:
        """The AIMConfig fields the message is about."""
        from llava.aim.knobs import fields_named

        return fields_named(self.template)


class UnsupportedModelError(AIMError, TypeError):
    """The model or processor is not one AIM knows how to patch."""


class UnsupportedUsageError(AIMError, RuntimeError):
    """A call AIM cannot serve correctly (e.g. chunked prefill with pruning)."""


class MediaError(AIMError, ValueError):
    """Base class of video and image input errors."""


class MediaNotFoundError(MediaError, FileNotFoundError):
    """The video or image file does not exist."""


class MediaDecodeError(MediaError):
    """The file exists but cannot be read or decoded (unreadable, corrupt, not a video)."""


class EmptyMediaError(MediaError):
    """The file decodes but holds no frames."""


class ModelLoadError(AIMError, OSError):
    """A checkpoint could not be found or loaded."""


class EvalArgumentError(AIMError, ValueError):
    """An lmms-eval model_args entry is unknown or has a bad value (plugin models)."""


class ResultsFileError(AIMError, ValueError):
    """An lmms-eval results file is missing, unreadable or not in the expected format."""


class CacheIntegrityError(AIMError, RuntimeError):
    """A decoder layer did not write the KV cache AIM expects (an upstream interface change):
    continuing would decode without context and give silently wrong answers."""


class ResourceError(AIMError, RuntimeError):
    """The machine lacks what the run asks for: the device does not exist here, or the input
    cannot fit in the memory that is free."""


class InsufficientMemoryError(ResourceError, MemoryError):
    """A run would not fit in the memory available (estimated before anything is allocated)."""
