"""Modules shared by every Lambda function: errors, manifest, bundle loading, input schema."""
