"""UIDL incremental sync and the stores that remember handled UIDs."""
