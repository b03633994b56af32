"""What to run: the matrix schema, its validation and expansion into cells."""
