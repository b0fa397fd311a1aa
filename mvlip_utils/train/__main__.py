"""``python -m mvlip_utils.train``: the command line of ``train.loop``."""

from .loop import main

if __name__ == "__main__":
    raise SystemExit(main())
