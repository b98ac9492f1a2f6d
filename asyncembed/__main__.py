"""``python -m asyncembed``: the same command as the ``asyncembed`` script."""

from ._cli import main

raise SystemExit(main())
