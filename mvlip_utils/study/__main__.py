"""``python -m mvlip_utils.study``: the command line of ``study.runner``."""

from .runner import main

if __name__ == "__main__":
    raise SystemExit(main())
