"""``python -m cli`` runs the ``wm`` command."""

from cli.main import main

main()
