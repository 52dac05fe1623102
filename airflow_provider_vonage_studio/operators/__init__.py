"""operators for the Vonage AI Studio provider."""
