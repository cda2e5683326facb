"""``python -m tunewise`` (and ``accelerate launch -m tunewise train ...``)."""

from tunewise.cli import main

main()
