"""`python -m benchmarks`: run the harness (see `benchmarks.cli`)."""

from .cli import main

raise SystemExit(main())
