#!/usr/bin/env python3
"""`python bench/run.py ...` from the repository root runs the bench package (`--help`)."""

import os
import sys

# Run as a script, this directory is on the path, not the root with the bench and tests packages.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
