#!/usr/bin/env python3
"""Build the slimserve Lambda layers (python3.12) without Docker.

    python layers/build.py [--recipe runtime|parquet] [--arch x86_64|arm64] [--out layers/build/<recipe>]
                           [--max-mib N] [--runtime-layer layers/build/runtime]

The build lives in the package ``slimserve_layers`` beside this file (its docstring lists the steps);
this script only runs its command line.
"""

import sys

from slimserve_layers.cli import main

if __name__ == "__main__":
    sys.exit(main())
