"""``python -m engine.cli`` (as ``accelerate launch -m engine.cli`` runs it): the ``magicapture`` command."""

from engine.cli.entry import main

main()
