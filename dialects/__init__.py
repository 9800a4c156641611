"""attnc.dialects."""
