"""Chat data: parsing with line numbers, checks, splits and conversion."""
