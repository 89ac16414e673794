"""Lambda function code: one subpackage per function plus shared modules in ``common``."""
