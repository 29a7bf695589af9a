"""`python -m sqlcache`: the same command line as the `sqlcache` console script."""

from ._cli import main

raise SystemExit(main())
