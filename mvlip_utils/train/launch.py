"""``run_pinned`` (one process per encoder on its device) where the study runner imports it from."""

from .device_share import run_pinned  # noqa: F401
