"""SageMaker script-mode entry point: the distil step (see pipeline.training.jobs)."""

import sys

from pipeline.training.jobs import main

if __name__ == "__main__":
    main("distil", sys.argv[1:])
