"""notifications for the Vonage AI Studio provider."""
