"""Embeddings service: text -> vectors through NVIDIA Triton (the only Triton caller)."""
