"""``python -m pipemake``."""

from .cli import main

main()
