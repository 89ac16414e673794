"""SageMaker script-mode entry point: the teacher step (see pipeline.training.jobs)."""

import sys

from pipeline.training.jobs import main

if __name__ == "__main__":
    main("teacher", sys.argv[1:])
