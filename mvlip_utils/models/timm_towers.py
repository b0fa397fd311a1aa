"""The encoder-name check that train/, measure/ and study/ import from here (its home is ``towers``)."""

from .towers import check_encoder  # noqa: F401
