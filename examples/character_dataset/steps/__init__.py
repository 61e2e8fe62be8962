"""Python stages of the character_dataset example: the synthetic video and the demo model.

Each stage's module is self-contained on purpose: pipemake keys a ``python`` stage on the
source of the module its function lives in, not on the modules that one imports.
"""
