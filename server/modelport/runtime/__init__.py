"""The code that runs inside a model's environment: standard library and msgspec only."""
