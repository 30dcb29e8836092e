"""`python -m benchmarks`: every benchmark, one report (see benchmarks/suite.py)."""

import sys

from benchmarks.suite import main

sys.exit(main())
