"""triggers for the Vonage AI Studio provider."""
