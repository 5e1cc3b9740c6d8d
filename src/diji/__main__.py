"""`python -m diji` — the same entry point as the `diji` console script (and what torchrun runs)."""

from diji.cli import main

raise SystemExit(main())
