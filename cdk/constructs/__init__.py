"""One construct per concern; each takes typed, validated props."""
