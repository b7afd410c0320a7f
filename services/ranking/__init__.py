"""Ranking service: ANN over LLM item vectors, a collaborative model, an evidence-weighted blend."""
