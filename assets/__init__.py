"""Dagster assets, asset checks and the resources they take: thin wiring of warehouse/, profiling/, router_core/."""
