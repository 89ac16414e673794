"""The feedback functions: labels for prediction ids, posted one by one or dropped as files."""
