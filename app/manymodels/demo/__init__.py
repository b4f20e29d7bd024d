"""Demo content: a generator for a store of small real models (see demo.catalog)."""
