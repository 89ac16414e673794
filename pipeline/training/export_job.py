"""SageMaker script-mode entry point: the export step (see pipeline.training.jobs)."""

import sys

from pipeline.training.jobs import main

if __name__ == "__main__":
    main("export", sys.argv[1:])
