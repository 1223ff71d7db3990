"""Typed errors: each carries one line a user can act on.

The UI and the CLI show ``str(error)``; tracebacks go to the log only.
"""


class WorkbenchError(Exception):
    """Base of every refusal the workbench raises on purpose."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:  # always one line
        return " ".join(self.message.split())


class UnsupportedFormat(WorkbenchError):
    """The bytes are not a format we read."""


class UnsafeModel(WorkbenchError):
    """The file could execute code on load, or tries to escape its container."""


class TrustedFormatRequired(UnsafeModel):
    """A format that can carry code; loading it needs the operator's trusted-formats setting."""


class ArchitectureRequired(WorkbenchError):
    """Weights alone (state_dict / safetensors) need an architecture from the model zoo."""


class WeightsMismatch(WorkbenchError):
    """State-dict keys or shapes do not fit the chosen architecture."""


class ModelRejected(WorkbenchError):
    """The model loaded but does not behave as an image classifier."""


class LimitExceeded(WorkbenchError):
    """A model or request would pass an operator limit; the message names the figure, the limit and its setting."""


class ImageRejected(WorkbenchError):
    """An uploaded image is refused (format, size, content)."""


class ParameterError(WorkbenchError):
    """An explainer parameter is unknown, of the wrong type, or over a configured cap."""


class LayerError(WorkbenchError):
    """A requested layer does not exist or has no spatial output."""


class UnsafeEnvironment(WorkbenchError):
    """The process environment weakens safe loading; the workbench refuses to start."""


class RunNotFound(WorkbenchError):
    """A share link names no stored run."""


class NonFiniteOutput(WorkbenchError):
    """The model outputs NaN or Inf for an image; names the first layer (in forward order) that does."""

    def __init__(self, message: str, *, layer: str | None = None, image: int | None = None):
        super().__init__(message)
        self.layer = layer
        self.image = image

    def __reduce__(self):  # raised in a model's worker process, re-raised in the app's
        return (_non_finite, (self.message, self.layer, self.image))


def _non_finite(message: str, layer: str | None, image: int | None) -> NonFiniteOutput:
    return NonFiniteOutput(message, layer=layer, image=image)
