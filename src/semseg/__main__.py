"""``python -m semseg``: the same as the ``semseg`` command."""

from semseg.cli import main

main()
