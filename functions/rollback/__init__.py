"""Rollback after promotion: a champion alarm serves the last known-good version again."""
