"""python -m ml_playground.bench [--corpus PATH] [--nanogpt-dir PATH] ..."""

from ml_playground.bench.runner import main

raise SystemExit(main())
