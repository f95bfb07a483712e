"""The hot tier: immutable FAISS segments with Arrow metadata on local flash, one atomic manifest, search."""
