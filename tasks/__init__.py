"""Prefect tasks, one per SIMS phase. Thin: read inputs through storage, call sims_core, write the
artifact, return its URI. No algorithm lives here."""
