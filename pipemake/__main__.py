"""``python -m pipemake``.

``python -m`` puts the working directory (most often the project) first on ``sys.path``,
where a project's ``json.py``, ``copy.py`` or ``yaml.py`` would be imported in place of
the library pipemake means; it is taken off before pipemake imports anything more. A
rule that imports the project's own modules still finds them: the project root is put
last on the path where that is needed (:func:`pipemake.rule.project_on_path`).
"""

import os
import sys


def _cwd() -> str | None:
    try:
        return os.getcwd()
    except OSError:  # the working directory was removed
        return None


if sys.path and sys.path[0] in ("", _cwd()):
    del sys.path[0]

from .entry import main  # noqa: E402

main()
