"""tierflow: the retrieval data plane (shared contracts: records, lineage, config, errors, CLI)."""

__version__ = "0.1.0"
