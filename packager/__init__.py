"""packager: an LLM fine-tune from data to a serving image you can trust."""

__version__ = "0.1.0"
