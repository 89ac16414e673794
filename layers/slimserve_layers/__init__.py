"""Build the slimserve Lambda layers (python3.12) without Docker.

Two recipes (``recipes.RECIPES``): ``runtime`` (onnxruntime, numpy, powertools, pydantic; every
function gets it) and ``parquet`` (pyarrow alone, for the batch functions, stacked on the runtime
layer, whose numpy it uses). Each build runs the same steps, one module each:

1. ``install``: ``pip install --platform manylinux_* --only-binary=:all: --python-version 3.12
   --no-deps --target <out>/python -r layers/<recipe>/requirements.txt`` (``requirements`` reads
   and checks the pinned list: the whole dependency set).
2. ``trim``: remove what is never imported at runtime (rules in ``recipes``, each with its reason),
   and libraries only when ``elf`` shows nothing in the layer needs them. Nothing is stripped.
3. ``elf``: every shared object's DT_NEEDED resolves inside the layer or to a library the Lambda
   python3.12 runtime (Amazon Linux 2023) provides, all built for the target architecture.
4. ``size``: unzipped and zipped size against the recipe's limits; a stacked layer also checks
   runtime layer + parquet layer + function code against Lambda's 250 MB.
5. ``import_test``: a fresh python3.12 with no site-packages runs ``import_checks/<recipe>.py``
   with ``sys.path`` in Lambda's order (function code, layers, stdlib, runtime SDK stand-ins).
6. ``report``: the summary ``layers/build/<recipe>-report.json``, beside the layer folder.

``build.build`` runs them in order; ``cli.main`` is ``python layers/build.py``.
"""
