"""SageMaker script-mode entry point: the validate step (see pipeline.training.jobs)."""

import sys

from pipeline.training.jobs import main

if __name__ == "__main__":
    main("validate", sys.argv[1:])
