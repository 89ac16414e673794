"""Training and distillation: SageMaker script-mode entry points that also run locally.

Each step reads its inputs from the SageMaker channels (``SM_CHANNEL_<NAME>``) and hyperparameters
from its arguments, and writes to ``SM_MODEL_DIR``; ``slimserve train`` runs the chain locally.
"""
