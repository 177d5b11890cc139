"""Sampling trained unconditional models: records and files (`generate`), table rows (`tables`), and sweeps of
sampling settings against quality (`sweep`)."""
