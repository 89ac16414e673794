"""The real-time inference function."""
