"""The local emulation: moto for AWS APIs, handlers called in-process with real events."""
