"""Prefect flows (the resumable T-iteration `self_improve`) and the `sims` command line."""
