"""Batch scoring: files under incoming/ scored to scored/, bad rows to rejected/, a run manifest."""
