"""The validation gate: a candidate bundle reaches users only when it has earned it."""
