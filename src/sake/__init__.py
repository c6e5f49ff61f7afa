"""sake: edit what audio-language models know about sounds, and measure the edits as SAKE does."""

__version__ = "0.1.0"
