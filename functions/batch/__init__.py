"""Batch scoring: files under incoming/ scored to scored/, bad rows to rejected/, a run manifest."""

# What the Distributed Map's item batcher hands every chunk from the run's input: CDK builds its
# BatchInput from this list, and the chunk function reads it (distributed.BatchInput).
MAP_BATCH_INPUT = ("bucket", "key", "version_id", "run_id", "model_uri", "model_manifest_sha256")
