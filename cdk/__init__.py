"""slimserve's CDK app (a package, so that `cdk/constructs/` never shadows the pip `constructs`)."""

import os

# jsii starts its Node runtime on the first aws_cdk import and prints a banner on EOL Node
# versions; silence it before that import so synth output stays readable.
os.environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")
os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "18,20")
