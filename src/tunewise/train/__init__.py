"""Training: chat collation with assistant-only labels, one engine for full | lora | qlora."""
