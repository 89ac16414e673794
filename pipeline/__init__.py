"""Everything that runs outside Lambda: bundle writer, training, local emulation, command line."""
