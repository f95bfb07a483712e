"""Lifecycle jobs: age stale embeddings from the hot tier to Lance tables on object storage (issue 4)."""
