"""The shared inference core: one way to load and run any Gemma 3n submodel."""
