"""attnc.simulator."""
