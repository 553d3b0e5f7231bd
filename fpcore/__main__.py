"""``python -m fpcore <command>``: see :mod:`fpcore.cli`."""

from fpcore.cli import main

raise SystemExit(main())
