"""``python -m packager.cli`` (as ``accelerate launch -m packager.cli train ...`` runs it)."""

from packager.cli import main

main()
