"""The gateway: the public Recommend, Feedback and ExplainRecommendation calls."""
