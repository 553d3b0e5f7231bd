"""``python -m fpcore <command>``: see :mod:`fpcore.cli`."""

import importlib.util
import sys

if importlib.util.find_spec("torch") is None:  # a Python without the set-up's packages: say so in one line
    sys.exit(
        f"fpcore needs torch, which {sys.executable} lacks: use the environment `make setup` builds "
        "(.venv/bin/python -m fpcore ..., or `source .venv/bin/activate` first)"
    )

from fpcore.cli import main  # noqa: E402

raise SystemExit(main())
