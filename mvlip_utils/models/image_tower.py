"""What the setup notebook reads of the image towers (their home is ``towers``)."""

from .towers import SSM_BACKEND, count_parameters  # noqa: F401
