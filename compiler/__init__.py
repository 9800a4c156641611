"""attnc: a compiler from transformer attention graphs to reconfigurable dataflow arrays."""

__version__ = "0.1.0"
