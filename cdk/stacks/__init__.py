"""Stacks only compose constructs."""
