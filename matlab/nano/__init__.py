"""Nano Gemma 3n: a small MatFormer trained by this project on a synthetic world."""
