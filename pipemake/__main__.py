"""``python -m pipemake``."""

from .entry import main

main()
