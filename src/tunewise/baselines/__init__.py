"""The three baselines a fine-tune must beat: a good prompt, few-shot examples and RAG."""
